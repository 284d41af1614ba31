"""TFRecord framing and tf.train.Example messages, checked against bytes TensorFlow wrote."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import consume_records, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from continuonbrain.rlds import RLDSError
from continuonbrain.rlds.example_proto import Example, Feature, build_example, parse_example
from continuonbrain.rlds.tfrecord import (
    TFRecordWriter,
    frame_record,
    is_gzip_file,
    iter_records,
    masked_crc32c,
    scan_records,
    write_records,
)

# Written by tf.io.TFRecordWriter (TensorFlow 2.21) for the records b"hello" and b"".
TF_FRAMING = bytes.fromhex(
    "0500000000000000eab2043e68656c6c6fbb1f1c19000000000000000029039807d8ea82a2"
)  # fmt: skip
# tf.train.Example(f=float_list[1.5, -2.0], i=int64_list[1, -1, 300], b=bytes_list[b"ab", b""]),
# serialized by TensorFlow's own protobuf classes.
TF_EXAMPLE = bytes.fromhex(
    "0a3a0a0d0a016212080a060a0261620a000a110a0166120c120a0a080000c03f000000c00a160a016912111a0f0a0d"
    "01ffffffffffffffffff01ac02"
)

PAYLOADS = [b"first", b"", b"x" * 1000, bytes(range(256))]
SETTINGS = fuzz_settings(80)


def record_offsets(payloads: list[bytes]) -> list[int]:
    offsets, pos = [], 0
    for p in payloads:
        offsets.append(pos)
        pos += 16 + len(p)
    return offsets


# --- framing ------------------------------------------------------------------------------


def test_framing_matches_tensorflow(tmp_path: Path) -> None:
    assert frame_record(b"hello") + frame_record(b"") == TF_FRAMING
    path = tmp_path / "tf.tfrecord"
    path.write_bytes(TF_FRAMING)
    assert list(iter_records(path)) == [(0, b"hello"), (21, b"")]


def test_masked_crc_formula() -> None:
    import crc32c

    crc = crc32c.crc32c(b"abc")
    assert masked_crc32c(b"abc") == ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(tmp_path: Path, compress: bool) -> None:
    path = tmp_path / ("data.tfrecord.gz" if compress else "data.tfrecord")
    assert write_records(path, PAYLOADS, gzip=compress) == len(PAYLOADS)
    assert is_gzip_file(path) == compress
    assert list(iter_records(path)) == list(zip(record_offsets(PAYLOADS), PAYLOADS, strict=True))
    if compress:
        assert gzip.decompress(path.read_bytes()) == b"".join(frame_record(p) for p in PAYLOADS)


def test_gzip_detected_by_content_not_name(tmp_path: Path) -> None:
    plain_named_gz = tmp_path / "plain.tfrecord.gz"
    write_records(plain_named_gz, [b"a"])
    gz_named_plain = tmp_path / "packed.tfrecord"
    gz_named_plain.write_bytes(gzip.compress(frame_record(b"b")))
    assert list(iter_records(plain_named_gz)) == [(0, b"a")]
    assert list(iter_records(gz_named_plain)) == [(0, b"b")]


def test_plain_file_that_starts_like_gzip(tmp_path: Path) -> None:
    """A first record of 0x088b1f bytes makes a plain file start with 1f 8b 08."""
    payload = b"\0" * 0x088B1F
    path = tmp_path / "big.tfrecord"
    write_records(path, [payload, b"next"])
    assert path.read_bytes()[:3] == b"\x1f\x8b\x08"
    assert [p for _, p in iter_records(path)] == [payload, b"next"]


def test_empty_file_has_no_records(tmp_path: Path) -> None:
    path = tmp_path / "empty.tfrecord"
    path.write_bytes(b"")
    assert list(scan_records(path)) == []


def test_missing_file_raises_rlds_error(tmp_path: Path) -> None:
    with pytest.raises(RLDSError) as info:
        list(iter_records(tmp_path / "nope.tfrecord"))
    assert info.value.file == str(tmp_path / "nope.tfrecord")


# --- damage -------------------------------------------------------------------------------


def write_three(tmp_path: Path) -> tuple[Path, bytearray]:
    path = tmp_path / "three.tfrecord"
    write_records(path, [b"zero", b"one!", b"two"])
    return path, bytearray(path.read_bytes())


def test_data_crc_mismatch_reports_record_and_continues(tmp_path: Path) -> None:
    path, data = write_three(tmp_path)
    second = 16 + 4
    data[second + 12] ^= 0xFF  # first payload byte of record 1
    path.write_bytes(bytes(data))

    records = list(scan_records(path))
    assert [r.data for r in records] == [b"zero", None, b"two"]
    bad = records[1]
    assert not bad.fatal and bad.offset == second and isinstance(bad.error, RLDSError)
    assert bad.error.file == str(path)
    assert "record 1" in str(bad.error) and f"byte offset {second}" in str(bad.error)
    assert "data CRC mismatch" in str(bad.error)

    with pytest.raises(RLDSError, match="data CRC mismatch"):
        list(iter_records(path))
    seen: list[RLDSError] = []
    assert [p for _, p in iter_records(path, on_data_error=seen.append)] == [b"zero", b"two"]
    assert len(seen) == 1 and "record 1" in str(seen[0])


def test_length_crc_mismatch_ends_the_file(tmp_path: Path) -> None:
    path, data = write_three(tmp_path)
    second = 16 + 4
    data[second + 8] ^= 0x01  # the length CRC of record 1
    path.write_bytes(bytes(data))

    records = list(scan_records(path))
    assert [r.data for r in records] == [b"zero", None]
    assert records[1].fatal and "length CRC mismatch" in str(records[1].error)
    assert "record 1" in str(records[1].error) and f"byte offset {second}" in str(records[1].error)
    with pytest.raises(RLDSError, match="length CRC"):
        list(iter_records(path, on_data_error=lambda err: None))


@pytest.mark.parametrize("cut", [1, 5, 12, 14, 17])
def test_truncated_file(tmp_path: Path, cut: int) -> None:
    """Cut inside the header, the payload or the footer of the last record."""
    path, data = write_three(tmp_path)
    third = 2 * 16 + 8
    path.write_bytes(bytes(data[: third + cut]))
    records = list(scan_records(path))
    assert [r.data for r in records[:2]] == [b"zero", b"one!"]
    assert len(records) == 3 and records[2].fatal
    assert "truncated" in str(records[2].error) and "record 2" in str(records[2].error)
    with pytest.raises(RLDSError, match="truncated"):
        list(iter_records(path))


def test_truncated_gzip_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.tfrecord.gz"
    write_records(path, [bytes(range(256)) * 40] * 3, gzip=True)
    path.write_bytes(path.read_bytes()[:-30])
    records = list(scan_records(path))
    assert records[-1].fatal and isinstance(records[-1].error, RLDSError)
    with pytest.raises(RLDSError):
        list(iter_records(path))


def test_huge_bogus_length_in_gzip_does_not_allocate(tmp_path: Path) -> None:
    """A length with a valid CRC but no data behind it: refused from the header (above the
    record limit), not a MemoryError."""
    length = struct.pack("<Q", 1 << 40)
    header = length + struct.pack("<I", masked_crc32c(length))
    path = tmp_path / "bogus.tfrecord.gz"
    path.write_bytes(gzip.compress(header + b"tiny"))
    (record,) = scan_records(path)
    assert record.fatal and "Limits.max_record_bytes" in str(record.error)


# --- writing ------------------------------------------------------------------------------


def test_writer_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "out.tfrecord"
    write_records(path, [b"old"])
    with pytest.raises(RuntimeError), TFRecordWriter(path) as writer:
        writer.write(b"new")
        raise RuntimeError("crash while writing")
    assert list(iter_records(path)) == [(0, b"old")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tfrecord"]


def test_writer_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.tfrecord"
    write_records(path, [b"a", b"b"])
    write_records(path, [b"c"])
    assert [p for _, p in iter_records(path)] == [b"c"]


# --- tf.train.Example ---------------------------------------------------------------------


def test_parse_example_written_by_tensorflow() -> None:
    parsed = parse_example(TF_EXAMPLE)
    assert parsed["f"].dtype == np.float32 and parsed["f"].tolist() == [1.5, -2.0]
    assert parsed["i"].dtype == np.int64 and parsed["i"].tolist() == [1, -1, 300]
    assert parsed["b"] == [b"ab", b""]


def test_field_numbers_match_tensorflow() -> None:
    fields = {f.name: f.number for f in Feature.DESCRIPTOR.fields}
    assert fields == {"bytes_list": 1, "float_list": 2, "int64_list": 3}
    assert Example.DESCRIPTOR.full_name == "tensorflow.Example"
    assert Example.DESCRIPTOR.fields_by_name["features"].number == 1


def test_build_then_parse() -> None:
    data = build_example(
        {
            "floats": np.arange(6, dtype=np.float32).reshape(2, 3),
            "ints": np.array([[1, -2], [3, 2**40]]),
            "flags": np.array([True, False]),
            "big": np.array([2**64 - 1], np.uint64),
            "text": ["héllo", b"raw"],
            "one": "x",
        }
    )
    parsed = parse_example(data)
    assert parsed["floats"].tolist() == [0, 1, 2, 3, 4, 5]
    assert parsed["ints"].tolist() == [1, -2, 3, 2**40]
    assert parsed["flags"].tolist() == [1, 0]
    assert parsed["big"].view(np.uint64).tolist() == [2**64 - 1]
    assert parsed["text"] == ["héllo".encode(), b"raw"]
    assert parsed["one"] == [b"x"]


def test_build_rejects_unstorable_dtype() -> None:
    with pytest.raises(RLDSError) as info:
        build_example({"c": np.array([1 + 2j])})
    assert info.value.field == "c"


def test_malformed_example_raises_rlds_error() -> None:
    with pytest.raises(RLDSError, match=r"tf\.train\.Example"):
        parse_example(b"\x0a\xff\xff\xff")


# --- property-based: only RLDSError ever comes out ----------------------------------------


@SETTINGS
@given(data=st.binary(max_size=300))
def test_random_bytes(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("rb") / "x.tfrecord"
    path.write_bytes(data)
    consume_records(path)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_random_bytes_behind_gzip_magic(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("rg") / "x.tfrecord.gz"
    path.write_bytes(b"\x1f\x8b" + data)
    consume_records(path)


VALID = b"".join(frame_record(p) for p in [TF_EXAMPLE, b"", b"payload" * 5])


@SETTINGS
@given(
    compress=st.booleans(),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.none() | st.integers(0, 10_000),
)
def test_mutated_valid_file(tmp_path_factory, compress: bool, edits: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(gzip.compress(VALID, mtime=0) if compress else VALID)
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    path = tmp_path_factory.mktemp("mut") / "x.tfrecord"
    path.write_bytes(bytes(data))
    consume_records(path)
