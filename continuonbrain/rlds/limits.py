"""What one read of RLDS data may cost, and the guarded reads that enforce it.

Every file the readers open comes through :class:`Limits` (image blobs, which ``LazyImage``
reads when asked, are the one exception so far), so that a damaged or
hostile dataset (a steps file that is a symlink to ``/dev/zero``, a FIFO, a 2 GB sparse file,
JSON nested a million deep, a gzip shard whose record claims terabytes) costs a bounded amount
of memory and time and becomes one :class:`RLDSError` naming the file, instead of a hang, a
``MemoryError`` or a ``RecursionError`` that takes the whole scan (and its report) down.

The defaults, and why (override any of them with ``Limits(...)``, passed as ``limits=`` to
``read_episodes``, ``scan_episodes`` or ``validate_path``):

``max_file_bytes`` = 1 GiB
    The largest file read into memory whole: a steps chunk, a single ``.json``/``.jsonl``
    episode, ``metadata.json``, ``dataset_info.json``, ``features.json``. A Continuon episode is
    read as a whole anyway, and the biggest real ones (minutes of steps with inline base64
    camera frames) are hundreds of MB; past a GiB an episode belongs in chunks or TFDS shards.
    TFRecord shards are streamed record by record, so their size is not limited.
``max_line_bytes`` = 64 MiB
    One JSONL line, i.e. one step: several full-HD camera frames in base64 fit many times over.
``max_record_bytes`` = 1 GiB
    One TFRecord record, i.e. one TFDS episode (images included); also bounds what a gzip shard
    may decompress for one record. Refused from the record header, before anything is read.
``max_json_depth`` = 128
    Nesting of arrays and objects. Real data is a few levels deep (an observation dict of
    nested-list images is 5, a TFDS ``features.json`` about 3 per nested FeaturesDict); 128 is far
    from Python's recursion limit, which the stdlib JSON parser (used for NaN tokens) and the code
    that walks parsed values would otherwise hit. Checked on the bytes, before parsing.

Only regular files are read: ``os.stat`` comes before ``open``, because opening a FIFO blocks
and opening some devices acts (``/dev/watchdog`` arms the watchdog). With ``root`` set (which
:func:`~continuonbrain.rlds.reader.scan_episodes` does when it walks a directory), a path that
resolves outside that tree is refused as well, so a symlink never takes a reader out of it.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import numpy as np
import orjson

from continuonbrain.rlds.errors import RLDSError

#: Reads past the first one are issued in pieces of this size (a file that grows while read).
_CHUNK = 16 << 20
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class Limits:
    """The bounds of one scan (see the module doc for the defaults) and the reads that apply them."""

    max_file_bytes: int = 1 << 30
    max_line_bytes: int = 64 << 20
    max_record_bytes: int = 1 << 30
    max_json_depth: int = 128
    #: The resolved directory being scanned; files that resolve outside it are refused.
    root: str | None = None

    def within(self, root: str | os.PathLike) -> Limits:
        """These limits, confined to the tree under the directory ``root``."""
        return replace(self, root=os.path.realpath(root))

    # --- files ------------------------------------------------------------------------------

    def open(self, path: str | os.PathLike) -> BinaryIO:
        """``path`` opened for reading if it is a regular file inside ``root``; else RLDSError."""
        fd, _ = self._open_regular(path)
        return os.fdopen(fd, "rb")

    def read(self, path: str | os.PathLike) -> bytes:
        """The whole content of the regular file ``path``, at most ``max_file_bytes`` of it.

        The size comes from ``fstat`` before a byte is read, and the read itself stops one byte
        past the limit, so neither a huge file nor one that grows while read costs more.
        """
        file = str(path)
        fd, st = self._open_regular(path)
        try:
            if st.st_size > self.max_file_bytes:
                raise RLDSError(over_limit("the file", st.st_size, "max_file_bytes", self.max_file_bytes), file=file)
            data = _read_at_most(fd, self.max_file_bytes + 1, first=st.st_size + 1)
        finally:
            os.close(fd)
        if len(data) > self.max_file_bytes:
            raise RLDSError(over_limit("the file", len(data), "max_file_bytes", self.max_file_bytes), file=file)
        return data

    def check_inside(self, path: str | os.PathLike, real: str | None = None) -> None:
        """Refuse ``path`` when it resolves (to ``real``, if known) outside ``root``."""
        if self.root is None:
            return
        real = real or os.path.realpath(path)
        if real != self.root and not real.startswith(self.root.rstrip(os.sep) + os.sep):
            raise RLDSError(
                f"resolves to {real}, outside the tree being scanned ({self.root}): symlinks are not followed out",
                file=str(path),
            )

    def _open_regular(self, path: str | os.PathLike) -> tuple[int, os.stat_result]:
        """A file descriptor on ``path`` and its ``fstat``, once it is known to be a regular file
        inside ``root``. The mode is checked before opening (opening a FIFO blocks, opening a
        device may act); ``O_NONBLOCK`` and the ``fstat`` after it cover a file swapped between
        the two, and the containment check asks the kernel which file was opened."""
        file = str(path)
        _require_regular(_stat(path, file).st_mode, file)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            raise RLDSError(f"cannot be read: {exc.strerror or exc}", file=file) from None
        try:
            st = os.fstat(fd)
            _require_regular(st.st_mode, file)
            if self.root is not None:
                self.check_inside(path, _opened_path(fd))
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    # --- JSON -------------------------------------------------------------------------------

    def check_line(self, data: bytes, file: str, line: int) -> None:
        if len(data) > self.max_line_bytes:
            refusal = over_limit("the line", len(data), "max_line_bytes", self.max_line_bytes)
            raise RLDSError(refusal, file=file, line=line)

    def check_depth(self, data: bytes, file: str, line: int | None = None) -> None:
        depth = json_depth(data)
        if depth > self.max_json_depth:
            raise RLDSError(
                f"JSON is nested {depth} deep, above the limit of {self.max_json_depth} (Limits.max_json_depth)",
                file=file,
                line=line,
            )

    def loads(self, data: bytes, file: str, line: int | None = None) -> Any:
        """Parse one JSON document whose nesting was checked first.

        orjson first; Python's ``json`` writes NaN/Infinity tokens, which orjson (strict JSON)
        rejects, so those parse with the stdlib, and the NaN check can name the step and field.
        """
        self.check_depth(data, file, line)
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            try:
                # Decoded here: given bytes, json.loads would guess UTF-16/32, which the byte
                # scan of check_depth does not understand.
                return json.loads(data.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                pass
            if line is None and exc.pos is not None:
                line = data.count(b"\n", 0, exc.pos) + 1
            raise RLDSError(f"malformed JSON: {exc.msg}", file=file, line=line) from None


DEFAULT_LIMITS = Limits()


def over_limit(what: str, size: int, name: str, limit: int) -> str:
    """The one wording of every size refusal, naming the limit that can be raised."""
    return f"{what} is {size:,} bytes, above the limit of {limit:,} (Limits.{name})"


def _stat(path: str | os.PathLike, file: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:
        raise RLDSError(f"cannot be read: {exc.strerror or exc}", file=file) from None


def _require_regular(mode: int, file: str) -> None:
    if not stat.S_ISREG(mode):
        raise RLDSError(f"is {_kind(mode)}, not a regular file: only regular files are read", file=file)


def _opened_path(fd: int) -> str | None:
    """The resolved path of an open file where the system says it (Linux: ``/proc/self/fd``),
    which is cheaper than ``realpath`` and is the file actually opened; ``None`` elsewhere."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _read_at_most(fd: int, n: int, first: int) -> bytes:
    """Read until EOF or ``n`` bytes. ``first`` sizes the first read (the size ``fstat`` gave,
    plus one to see EOF). A read allocates the whole size it asks for before it knows how much
    there is, so after a short read the next one only probes for a byte: an ordinary file takes
    one read and a probe, and never a buffer of ``n``."""
    parts: list[bytes] = []
    total = 0
    ask = min(first, n)
    while total < n:
        part = os.read(fd, ask)
        if not part:
            break
        parts.append(part)
        total += len(part)
        ask = min(_CHUNK, n - total) if len(part) == ask else 1
    return parts[0] if len(parts) == 1 else b"".join(parts)


# --- nesting depth on the bytes -----------------------------------------------------------

_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON text ``data``; brackets inside
    strings do not count.

    Exact for valid JSON, and for the valid prefix of invalid JSON, which is all that a parser
    descends into. Escapes go first: with every escaped backslash removed, a backslash left
    escapes the byte after it, and only an escaped quote matters. Then all but quotes and
    brackets are dropped (``bytes.translate``, in C), and a bracket after an odd number of
    quotes is inside a string. The usual case, where no string holds a bracket, is cheaper:
    each string is then an adjacent ``""`` pair, and no pair can straddle a bracket.
    """
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = data.translate(None, _NOT_STRUCTURE)
    brackets = structure.replace(b'""', b"")
    if b'"' in brackets:
        codes = np.frombuffer(structure, np.uint8)
        quote = codes == ord('"')
        outside = ~(quote | (np.cumsum(quote, dtype=np.int64) & 1).astype(bool))
        brackets = codes[outside].tobytes()
    steps = np.frombuffer(brackets.translate(_DEPTH_STEP), np.int8)
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


__all__ = ["DEFAULT_LIMITS", "Limits", "json_depth", "over_limit"]
