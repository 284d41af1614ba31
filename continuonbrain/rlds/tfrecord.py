"""TFRecord framing, read and written without TensorFlow.

A TFRecord file is a sequence of records, each framed as::

    uint64  length              little-endian
    uint32  masked_crc32c(length bytes)
    byte    data[length]
    uint32  masked_crc32c(data)

with ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8  (mod 2**32)``. A file may be
gzip-compressed as a whole (TFDS shards are not; ``TFRecordWriter(..., "GZIP")`` files are).

The two CRCs fail differently, and the API reflects that: a bad *data* CRC means one record's
bytes are damaged but the framing is intact, so :func:`scan_records` reports that record and
goes on with the next one (the other episodes in a shard are still usable); a bad *length*
CRC or a file that ends mid-record means the framing itself can no longer be trusted, so the
file ends there. :func:`iter_records` is the strict form that raises on the first problem (or
hands data-CRC errors to a callback and continues).

A record longer than ``Limits.max_record_bytes`` is refused from its header, before a byte of
it is read or allocated: in a plain file it is skipped (seeking past it) and reading goes on;
in a gzip file, where skipping would mean decompressing it, the file ends there.
"""

from __future__ import annotations

import contextlib
import gzip as gzip_lib
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import crc32c as crc32c_lib

from continuonbrain.fsutil import fsync_dir, naming, temp_file
from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.limits import DEFAULT_LIMITS, Limits, over_limit

_GZIP_MAGIC = b"\x1f\x8b"
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8
#: Largest read issued at once: a corrupt length field (in a gzip file, where the size on disk
#: says nothing about the uncompressed size) must not make us allocate terabytes up front.
_READ_CHUNK = 64 << 20


def masked_crc32c(data: bytes | memoryview) -> int:
    """The CRC32C of ``data``, masked as TFRecord stores it.

    Masking exists because CRCs of data that itself contains CRCs are weak; we only need to
    match what TensorFlow writes.
    """
    crc = crc32c_lib.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Record:
    """One record of a TFRecord file, good or bad.

    ``offset`` is the byte offset of the record's header (in the uncompressed stream for gzip
    files). Exactly one of ``data`` and ``error`` is set. ``fatal`` errors (truncation, bad
    length CRC, broken gzip stream) are always the last record of the file.
    """

    index: int
    offset: int
    data: bytes | None = None
    error: RLDSError | None = None
    fatal: bool = False


def is_gzip_file(path: Path) -> bool:
    """True when ``path`` holds a gzip stream rather than plain TFRecord framing.

    The gzip magic ``1f 8b`` is also a possible start of a plain file (a first record whose
    length ends in ``0x8b1f``), so a file that starts with it but whose first 12 bytes are a
    valid TFRecord header is plain. A ``.gz`` name with plain content is read as plain too.
    """
    with DEFAULT_LIMITS.open(path) as f:
        return _is_gzip_head(f.read(_HEADER.size))


def _is_gzip_head(head: bytes) -> bool:
    return head.startswith(_GZIP_MAGIC) and not _valid_header(head)


def _valid_header(head: bytes) -> bool:
    if len(head) < _HEADER.size:
        return False
    _, stored = _HEADER.unpack(head)
    return masked_crc32c(head[:8]) == stored


def scan_records(path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS) -> Iterator[Record]:
    """Yield every record of ``path`` (plain or gzip) as a :class:`Record`.

    Never raises for bad content: a damaged record comes out as a ``Record`` with ``error``
    set (each error names the file, the record index and the byte offset). Only a file that
    cannot be opened at all (or is not a regular file, see ``limits``) raises :class:`RLDSError`.
    """
    path = Path(path)
    raw = limits.open(path)
    try:
        gz = _is_gzip_head(raw.read(_HEADER.size))
        raw.seek(0)
        stream: BinaryIO = gzip_lib.GzipFile(fileobj=raw, mode="rb") if gz else raw  # type: ignore[assignment]
        size = None if gz else os.fstat(raw.fileno()).st_size
        yield from _scan_stream(stream, path, size, limits.max_record_bytes)
    finally:
        raw.close()


@dataclass(frozen=True, slots=True)
class _At:
    """Where in a file a record starts, for its errors."""

    file: str
    index: int
    offset: int

    def error(self, message: str, fatal: bool = False) -> Record:
        err = RLDSError(f"record {self.index} at byte offset {self.offset}: {message}", file=self.file)
        return Record(self.index, self.offset, error=err, fatal=fatal)


def _scan_stream(stream: BinaryIO, path: Path, size: int | None, max_record: int) -> Iterator[Record]:
    index = 0
    offset = 0
    while True:
        at = _At(str(path), index, offset)
        try:
            head = _read_exact(stream, _HEADER.size)
        except _StreamError as exc:
            yield at.error(str(exc), fatal=True)
            return
        if not head:
            return
        if len(head) < _HEADER.size:
            yield at.error(
                f"file ends inside the record header ({len(head)} of {_HEADER.size} bytes): truncated", fatal=True
            )
            return
        length, stored = _HEADER.unpack(head)
        if masked_crc32c(head[:8]) != stored:
            yield at.error(
                "length CRC mismatch: the record framing is corrupt, the rest of the file is unreadable", fatal=True
            )
            return
        if size is not None and offset + _HEADER.size + length + _FOOTER.size > size:
            yield at.error(f"record claims {length} bytes but the file ends at byte {size}: truncated", fatal=True)
            return
        if length > max_record:
            refusal = over_limit("the record", length, "max_record_bytes", max_record)
            if size is None:
                yield at.error(
                    f"{refusal}; a gzip stream cannot be skipped unread, so the rest is not read", fatal=True
                )
                return
            stream.seek(length + _FOOTER.size, os.SEEK_CUR)  # the framing is intact: go on after it
            record = at.error(f"{refusal}; skipped unread")
        else:
            record = _read_body(stream, length, at)
        yield record
        if record.fatal:
            return
        index += 1
        offset += _HEADER.size + length + _FOOTER.size


def _read_body(stream: BinaryIO, length: int, at: _At) -> Record:
    """The record whose header said ``length``: its data, a data-CRC error (the framing is
    intact, reading goes on), or a fatal error when the stream ends or breaks inside it."""
    try:
        body = _read_exact(stream, length + _FOOTER.size)
    except _StreamError as exc:
        return at.error(str(exc), fatal=True)
    if len(body) < length + _FOOTER.size:
        return at.error(
            f"file ends inside the record ({len(body)} of {length + _FOOTER.size} bytes): truncated", fatal=True
        )
    data = body[:length]
    (stored,) = _FOOTER.unpack_from(body, length)
    computed = masked_crc32c(data)
    if computed != stored:
        return at.error(f"data CRC mismatch (stored 0x{stored:08x}, computed 0x{computed:08x}); the record is damaged")
    return Record(at.index, at.offset, data=data)


class _StreamError(Exception):
    """A broken gzip stream (bad header, bad deflate data, bad trailer CRC)."""


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Read up to ``n`` bytes (fewer only at end of file), in bounded chunks."""
    try:
        if n <= _READ_CHUNK:
            return stream.read(n)
        parts = []
        remaining = n
        while remaining:
            part = stream.read(min(remaining, _READ_CHUNK))
            if not part:
                break
            parts.append(part)
            remaining -= len(part)
        return b"".join(parts)
    except (gzip_lib.BadGzipFile, EOFError, zlib.error) as exc:
        raise _StreamError(f"gzip stream is corrupt or truncated ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise _StreamError(f"read failed ({exc.strerror or exc})") from None


def iter_records(
    path: str | os.PathLike, on_data_error: Callable[[RLDSError], None] | None = None
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, payload)`` for each record of ``path``, verifying both CRCs.

    A damaged record raises :class:`RLDSError`, unless ``on_data_error`` is given: then a
    record whose *data* CRC fails is passed to it and reading continues with the next record
    (the framing is intact). Truncation and length-CRC errors always raise.
    """
    for record in scan_records(path):
        if record.error is None:
            assert record.data is not None
            yield record.offset, record.data
        elif on_data_error is not None and not record.fatal:
            on_data_error(record.error)
        else:
            raise record.error


def frame_record(payload: bytes) -> bytes:
    """One record with its TFRecord framing."""
    length = struct.pack("<Q", len(payload))
    return length + _FOOTER.pack(masked_crc32c(length)) + payload + _FOOTER.pack(masked_crc32c(payload))


class TFRecordWriter:
    """Write records to ``path`` atomically: all of them appear at once, or none.

    Records go to a temporary file in the same directory, which is fsynced and renamed over
    ``path`` on :meth:`close`; an exception inside the ``with`` block removes it instead. A
    crash therefore never leaves a half-written shard under a name a reader would pick up.
    """

    def __init__(self, path: str | os.PathLike, gzip: bool = False):
        self.path = Path(path)
        self.count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_file(self.path)  # mode from the umask, like every file the project writes
        self._raw = open(self._tmp, "wb")  # noqa: SIM115 - closed by close()/abort()
        # mtime=0 and no file name in the header: the same records give the same bytes.
        self._out: BinaryIO = (
            gzip_lib.GzipFile(filename="", fileobj=self._raw, mode="wb", mtime=0) if gzip else self._raw  # type: ignore[assignment]
        )

    def write(self, payload: bytes) -> None:
        with naming(self.path):
            self._out.write(frame_record(payload))
        self.count += 1

    def close(self) -> None:
        """Flush, fsync and move the file into place."""
        if self._raw.closed:
            return
        with naming(self.path):
            if self._out is not self._raw:
                self._out.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop everything written so far, even when the disk is full: closing flushes the
        buffers, which then fails again, and the temporary file must still go."""
        for stream in (self._out, self._raw):
            with contextlib.suppress(OSError):
                stream.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_records(path: str | os.PathLike, payloads: Iterable[bytes], gzip: bool = False) -> int:
    """Write ``payloads`` as a TFRecord file (atomically, see :class:`TFRecordWriter`).

    Returns the number of records written.
    """
    with TFRecordWriter(path, gzip=gzip) as writer:
        for payload in payloads:
            writer.write(payload)
    return writer.count
