"""The spool format: what the agent relies on. Torn tails wait, corrupt frames are skipped
and reported, garbage never raises, files are private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import meterkit
from meterkit._spool import (
    FRAME_HEADER_SIZE,
    KIND_MEASUREMENT,
    SegmentWriter,
    encode_frame,
    read_segment,
    segments,
)
from tests.sdk.helpers import spooled


def write_segment(directory: Path, payloads: list[bytes], seal: bool = True) -> Path:
    writer = SegmentWriter(directory, "test")
    writer.write(b"".join(encode_frame(KIND_MEASUREMENT, p) for p in payloads), len(payloads))
    assert writer.path is not None
    path = writer.path
    if seal:
        writer.seal()
    return path


PAYLOADS = [orjson.dumps({"uid": f"u{i}", "n": i}) for i in range(5)]


def test_round_trip_header_and_seal(tmp_path: Path) -> None:
    path = write_segment(tmp_path, PAYLOADS)
    result = read_segment(path)
    assert result.error is None and result.sealed and not result.torn and not result.corrupt
    assert [f.payload for f in result.frames] == PAYLOADS
    assert result.header is not None and result.header["format"] == 2 and result.header["pid"] == os.getpid()
    assert result.next_offset == path.stat().st_size


def test_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    path = write_segment(directory, PAYLOADS)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_existing_open_directory_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    write_segment(directory, PAYLOADS)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_torn_last_frame_is_left_for_later_and_resumes(tmp_path: Path) -> None:
    path = write_segment(tmp_path, PAYLOADS, seal=False)
    full = path.read_bytes()
    extra = encode_frame(KIND_MEASUREMENT, b'{"uid": "late"}')
    path.write_bytes(full + extra[:7])  # a crash mid-write
    first = read_segment(path)
    assert len(first.frames) == 5 and first.torn and not first.corrupt
    assert first.next_offset == len(full)
    path.write_bytes(full + extra)  # the writer finishes the frame
    second = read_segment(path, first.next_offset)
    assert [f.payload for f in second.frames] == [b'{"uid": "late"}']
    assert not second.torn


def test_corrupt_frame_is_skipped_and_reported_and_the_rest_is_read(tmp_path: Path) -> None:
    path = write_segment(tmp_path, PAYLOADS)
    data = bytearray(path.read_bytes())
    second = read_segment(path).frames[1]
    data[second.offset + FRAME_HEADER_SIZE + 3] ^= 0xFF  # flip a bit inside payload 1
    path.write_bytes(bytes(data))
    result = read_segment(path)
    assert [f.payload for f in result.frames] == [PAYLOADS[0], *PAYLOADS[2:]]
    assert len(result.corrupt) == 1 and result.corrupt[0].offset == second.offset
    assert result.sealed


def test_corrupt_length_is_caught_by_the_crc(tmp_path: Path) -> None:
    path = write_segment(tmp_path, PAYLOADS)
    data = bytearray(path.read_bytes())
    first = read_segment(path).frames[0]
    data[first.offset + 4] ^= 0x01  # the length field
    path.write_bytes(bytes(data))
    result = read_segment(path)
    assert [f.payload for f in result.frames] == PAYLOADS[1:]
    assert len(result.corrupt) == 1


def test_not_a_segment(tmp_path: Path) -> None:
    path = tmp_path / "x.mks"
    path.write_bytes(b"hello world, certainly not a spool segment")
    assert read_segment(path).error == "not a meterkit spool segment (bad magic)"
    assert read_segment(tmp_path / "missing.mks").error == "cannot read: No such file or directory"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600), cut=st.integers(0, 2000), flips=st.lists(st.integers(0, 2000), max_size=4))
def test_reader_never_crashes_and_never_invents_frames(tmp_path: Path, data: bytes, cut: int, flips: list[int]) -> None:
    path = write_segment(tmp_path, PAYLOADS)
    good = path.read_bytes()
    mangled = bytearray(good[: max(cut, 0)] + data)
    for i in flips:
        if i < len(mangled):
            mangled[i] ^= 0x5A
    path.write_bytes(bytes(mangled))
    result = read_segment(path)  # must not raise
    for frame in result.frames:  # a frame is returned only if its CRC checks out
        assert frame.payload in PAYLOADS
    path.unlink()


def test_rotation_by_size_seals_segments(spool: Path) -> None:
    client = meterkit.Client(spool_dir=spool, max_segment_bytes=4096, flush_interval_millis=10, max_batch_size=16)
    for i in range(300):
        client.record("m", account="a", measure={"n": i})
    client.shutdown(10)
    files = segments(spool)
    assert len(files) > 3
    reads = [read_segment(f) for f in files]
    assert all(r.sealed for r in reads)
    assert all(f.stat().st_size <= 4096 + 1024 for f in files)  # one batch may straddle
    assert sorted(m["measure"]["n"] for m in spooled(spool)) == list(range(300))


def test_rotation_by_age(spool: Path) -> None:
    client = meterkit.Client(spool_dir=spool, max_segment_age_seconds=0.05, flush_interval_millis=10)
    client.record("m", account="a", measure={"n": 1})
    assert client.flush(5)
    import time

    time.sleep(0.1)
    client.record("m", account="a", measure={"n": 2})
    client.shutdown(5)
    assert len(segments(spool)) == 2
