"""A damaged segment header costs only its own bytes: the frames after it are salvaged and
the damage is reported. Segments here are written by the SDK's own writer, then damaged."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import orjson
import pytest

from meterkit._spool import (
    FORMAT_VERSION,
    KIND_MEASUREMENT,
    MAGIC,
    SegmentWriter,
    encode_frame,
    encode_header,
    read_segment,
    segment_pid,
)

PAYLOADS = [orjson.dumps({"uid": f"u{i}", "n": i}) for i in range(5)]


def written(directory: Path, seal: bool = True) -> tuple[Path, int]:
    """A segment as the SDK writes it, and the length of its header."""
    writer = SegmentWriter(directory, "recover")
    writer.write(b"".join(encode_frame(KIND_MEASUREMENT, p) for p in PAYLOADS), len(PAYLOADS))
    assert writer.path is not None
    path = writer.path
    if seal:
        writer.seal()
    first = read_segment(path).frames[0].offset
    return path, first


def damage(path: Path, at: int, xor: int = 0x5A) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= xor
    path.write_bytes(bytes(data))


def test_every_byte_of_the_header_can_be_damaged_without_losing_a_frame(tmp_path: Path) -> None:
    path, header_len = written(tmp_path)
    good = path.read_bytes()
    for at in range(header_len):
        path.write_bytes(good)
        damage(path, at)
        result = read_segment(path)
        assert result.error is None, at
        assert [f.payload for f in result.frames] == PAYLOADS, at
        assert result.sealed and not result.torn, at
        assert result.header is None and result.header_corrupt, at
        assert result.corrupt[0].offset == 0 and result.corrupt[0].length == header_len, at
        assert result.corrupt[0].reason == result.header_corrupt, at


@pytest.mark.parametrize(
    ("at", "reason"),
    [
        (0, "corrupt segment header (bad magic)"),
        (8, "corrupt segment header (CRC mismatch)"),  # the version field: not a real other version
        (15, "corrupt segment header (length)"),  # the length's top byte: far past 16 MiB
        (20, "corrupt segment header (CRC mismatch)"),  # inside the metadata
    ],
)
def test_the_reason_names_what_is_wrong_with_the_header(tmp_path: Path, at: int, reason: str) -> None:
    path, _ = written(tmp_path)
    damage(path, at, 0x40)
    assert read_segment(path).header_corrupt == reason


def test_a_header_cut_short_by_a_full_disk_and_frames_after_it(tmp_path: Path) -> None:
    path, header_len = written(tmp_path, seal=False)
    data = path.read_bytes()
    path.write_bytes(data[: header_len - 30] + data[header_len:])  # part of the header, then frames
    result = read_segment(path)
    assert [f.payload for f in result.frames] == PAYLOADS
    assert result.header_corrupt == "corrupt segment header (CRC mismatch)"
    assert result.corrupt[0].length == header_len - 30
    # Shorter than the header says it is, yet a frame checks out in it: not still being written.
    one = encode_frame(KIND_MEASUREMENT, PAYLOADS[0])
    path.write_bytes(data[: header_len - 60] + one)
    result = read_segment(path)
    assert [f.payload for f in result.frames] == [PAYLOADS[0]]
    assert result.header_corrupt == "corrupt segment header (incomplete)"


def test_metadata_that_checks_out_but_is_not_json(tmp_path: Path) -> None:
    body = b"{not json"
    fixed = struct.pack("<8sHHI", MAGIC, FORMAT_VERSION, 0, len(body))
    header = fixed + body + struct.pack("<I", zlib.crc32(fixed[8:] + body))
    path = tmp_path / "0000000000001-1-abcd0123-00001.mks"
    path.write_bytes(header + encode_frame(KIND_MEASUREMENT, PAYLOADS[0]))
    result = read_segment(path)
    assert result.header_corrupt == "corrupt segment header (metadata is not JSON)"
    assert [f.payload for f in result.frames] == [PAYLOADS[0]]


def test_a_damaged_header_with_no_frame_yet_waits_then_salvages_what_follows(tmp_path: Path) -> None:
    path = tmp_path / "0000000000001-1-abcd0123-00001.mks"
    header = bytearray(encode_header({"format": 1, "pid": 1, "host": "h"}))
    header[-1] ^= 0xFF  # its CRC
    path.write_bytes(bytes(header))
    first = read_segment(path)
    assert first.error is None and first.torn and not first.frames
    assert first.header_corrupt == "corrupt segment header (CRC mismatch)"
    assert first.corrupt[0].length == len(header) and first.next_offset == 0
    with path.open("ab") as f:  # the writer goes on appending
        f.write(encode_frame(KIND_MEASUREMENT, PAYLOADS[0]) + encode_frame(KIND_MEASUREMENT, PAYLOADS[1]))
    second = read_segment(path, first.next_offset)
    assert [f.payload for f in second.frames] == PAYLOADS[:2]
    with path.open("ab") as f:
        f.write(encode_frame(KIND_MEASUREMENT, PAYLOADS[2]))
    third = read_segment(path, second.next_offset)  # later reads start past the header
    assert [f.payload for f in third.frames] == [PAYLOADS[2]] and not third.corrupt


def segment_of_version(tmp_path: Path, version: int) -> Path:
    body = orjson.dumps({"format": version, "pid": 1})
    fixed = struct.pack("<8sHHI", MAGIC, version, 0, len(body))
    path = tmp_path / f"0000000000001-1-abcd0123-0000{version}.mks"
    path.write_bytes(fixed + body + struct.pack("<I", zlib.crc32(fixed[8:] + body)) + encode_frame(1, PAYLOADS[0]))
    return path


def test_another_format_version_is_reported_not_guessed(tmp_path: Path) -> None:
    result = read_segment(segment_of_version(tmp_path, 3))
    assert result.error == "spool format version 3; this reader knows versions 1 and 2"
    assert not result.frames


def test_version_1_segments_are_still_read(tmp_path: Path) -> None:
    """Old spools still drain: a version 1 segment (measurement frames) reads as before."""
    result = read_segment(segment_of_version(tmp_path, 1))
    assert result.error is None and result.header == {"format": 1, "pid": 1}
    assert [f.payload for f in result.frames] == [PAYLOADS[0]]


def test_a_damaged_header_naming_another_version_with_no_frame_is_an_error(tmp_path: Path) -> None:
    path, header_len = written(tmp_path)
    data = bytearray(path.read_bytes()[:header_len])
    data[8] = 7  # version 7, and the CRC no longer checks out
    path.write_bytes(bytes(data))
    result = read_segment(path)
    assert result.error is not None and "format version 7" in result.error
    assert result.header_corrupt is None  # never taken for a segment of ours to retire


def test_garbage_without_any_frame_is_not_a_segment(tmp_path: Path) -> None:
    path = tmp_path / "x.mks"
    path.write_bytes(b"\x00" * 200)
    assert read_segment(path).error == "not a meterkit spool segment (bad magic)"


def test_empty_and_partial_headers_wait(tmp_path: Path) -> None:
    path = tmp_path / "0000000000001-1-abcd0123-00001.mks"
    path.write_bytes(b"")
    empty = read_segment(path)
    assert empty.torn and empty.error is None and empty.header_corrupt is None
    path.write_bytes(encode_header({"pid": 1})[:20])
    partial = read_segment(path)
    assert partial.torn and partial.error is None and partial.header_corrupt is None


def test_the_writer_pid_from_a_segment_name(tmp_path: Path) -> None:
    path, _ = written(tmp_path)
    header = read_segment(path).header
    assert header is not None and segment_pid(path) == header["pid"]
    assert segment_pid("0001700000000000-4242-abcd0123-00001.mks") == 4242
    assert segment_pid("x.mks") is None
    assert segment_pid("1700000000000-pid-abcd0123-00001.mks") is None
