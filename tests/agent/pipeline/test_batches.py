"""The agent's per-batch work gives the figures the per-measurement definitions give: batch
frames become the records they carry (a bad row refused alone), each record is serialised
once and hashed as ``content_hash`` hashes it, a batch's totals are ``tally``'s with the
digest of its content hashes, uids compress as they always did, and a checkpoint file that
lags the journal loses nothing after a crash."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterkit._frames import encode_batch
from meterkit._model import content_hash, tally
from meterkit._spool import KIND_BATCH, SegmentWriter, encode_frame
from meterkit._timefmt import iso_ms
from meterkit_agent.agent import Agent
from meterkit_agent.audit.journal import _compress_slowly, compress_uids, read_entries, uid_digest
from meterkit_agent.config import parse_config
from meterkit_agent.contentdigest import fold
from meterkit_agent.exporters.exporterhelper import Serialised, chunks, idempotency_key
from meterkit_agent.pipeline.prepare import Preparer, serialise
from meterkit_agent.pipeline.telemetry import AgentMetrics
from meterkit_agent.pipeline.totals import delivery_totals
from meterkit_agent.processors.validate import ValidateConfig, ValidateProcessor
from meterkit_agent.receivers.spool import Envelope

PREFIX = "0123abcd-0000-8000-8000-"
NOW_NS = time.time_ns()


def row(ts_ns: int, account: str = "acme", **measure: Any) -> list[Any]:
    return [ts_ns, "api_calls", account, None, None, None, None, None, measure or {"calls": 1}, None, None]


def payload(rows: list[list[Any]], first: int = 1) -> bytes:
    """A batch frame's payload, as the SDK's flusher writes it (rows flat, one after another)."""
    return encode_batch(PREFIX, first, [value for r in rows for value in r])


def batch_frame(rows: list[list[Any]], first: int = 1, end: int = 100, validated: str | None = None) -> Envelope:
    return Envelope("spool/seg-1.mks", "7@host", validated, end, KIND_BATCH, payload(rows, first), 0)


@pytest.fixture
def metrics(tmp_path: Path) -> Any:
    m = AgentMetrics(tmp_path, lambda: 0)
    yield m
    m.shutdown()


def test_a_batch_frame_becomes_its_records_and_a_bad_row_is_refused_alone(metrics: AgentMetrics) -> None:
    validate = ValidateProcessor(ValidateConfig())
    rows = [row(NOW_NS - i * 10**6, calls=i) for i in range(5)]
    rows[2] = row(NOW_NS, account="")  # no account: refused by validation, alone
    p = Preparer([("validate", validate)], metrics)([batch_frame(rows), batch_frame([row(NOW_NS)], first=6, end=180)])

    assert [m["uid"] for m in p.records] == [f"{PREFIX}{n:012x}" for n in (1, 2, 4, 5, 6)]
    assert p.records[0] == {
        "uid": f"{PREFIX}000000000001",
        "meter": "api_calls",
        "account": "acme",
        "ts": iso_ms(NOW_NS),
        "measure": {"calls": 0},
    }
    assert [(r.measurement["uid"], r.reason, r.stage) for r in p.rejected] == [
        (f"{PREFIX}000000000003", "invalid:missing_account", "validate")
    ]
    assert p.positions == {"spool/seg-1.mks": 180}
    assert p.sources["spool/seg-1.mks"][0] == "7@host"
    assert len(p.sources["spool/seg-1.mks"][1]) == 6  # every uid read; the journal keeps the delivered ones
    # serialised once, with sorted keys: the bytes the content hash covers
    assert isinstance(p.records, Serialised)
    assert p.records.encoded == [orjson.dumps(m, option=orjson.OPT_SORT_KEYS) for m in p.records]
    assert [d.hex() for d in p.digests] == [content_hash(m) for m in p.records]


def test_a_frame_that_is_no_batch_is_dead_lettered_and_its_position_passed(metrics: AgentMetrics) -> None:
    broken = Envelope("spool/seg-1.mks", "7@host", None, 50, KIND_BATCH, b"[1, 2]", 0)
    p = Preparer([], metrics)([broken, batch_frame([row(NOW_NS)], end=90)])
    assert [(reason, stage) for _, reason, _, stage in p.broken] == [("invalid:not_a_batch", "parse")]
    assert len(p.records) == 1 and p.positions == {"spool/seg-1.mks": 90}


def test_a_frame_its_writer_validated_as_we_would_is_trusted(metrics: AgentMetrics) -> None:
    validate = ValidateProcessor(ValidateConfig())
    odd = row(NOW_NS, account="   ")  # blank: a writer that validated would never have written it
    trusted = Preparer([("validate", validate)], metrics)([batch_frame([odd], validated=validate.token)])
    checked = Preparer([("validate", validate)], metrics)([batch_frame([odd], validated="rules1:other")])
    assert len(trusted.records) == 1 and not trusted.rejected
    assert not checked.records and checked.rejected[0].reason == "invalid:missing_account"


def test_one_request_carries_the_pipelines_bytes_and_larger_batches_are_split() -> None:
    records = [{"uid": f"u{i}", "meter": "m", "account": "a", "ts": "2026-01-01T00:00:00.000Z"} for i in range(5)]
    batch, _, _ = serialise(records)
    [one] = list(chunks(batch, 10, 10_000))
    assert [data for _, data in one] == batch.encoded
    assert [len(c) for c in chunks(batch, 2, 10_000)] == [2, 2, 1]
    assert [len(c) for c in chunks(list(batch), 2, 10_000)] == [2, 2, 1]  # a plain list is serialised here


def reference_totals(delivered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The definition: tally, and per bucket the fold of each measurement's content_hash."""
    rows = tally(delivered)
    for r in rows:
        members = [
            content_hash(m)
            for m in delivered
            if (
                str(m.get("meter")),
                str(m.get("account")),
                (m["ts"][:13] if type(m.get("ts")) is str else "") + ":00:00Z",
            )
            == (r["meter"], r["account"], r["hour"])
        ]
        r.update(fold(members).as_json())
    return rows


numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.booleans(),
    st.text(max_size=2),
)
measurements = st.fixed_dictionaries(
    {
        "uid": st.text(min_size=1, max_size=4),
        "meter": st.sampled_from(["a", "b"]),
        "account": st.sampled_from(["x", "y", "z"]),
        "ts": st.sampled_from(["2026-01-01T10:59:59.999Z", "2026-01-01T11:00:00.000Z", "2026-01-02T11:00:00.000Z"]),
    },
    optional={
        "measure": st.dictionaries(st.sampled_from(["n", "m", "k"]), numbers, max_size=3),
        "cost": st.one_of(st.dictionaries(st.sampled_from(["usd"]), numbers, max_size=1), st.just("not an object")),
        "who": st.dictionaries(st.sampled_from(["user"]), st.text(max_size=3), max_size=1),
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(measurements, max_size=40))
def test_batch_totals_are_tally_and_the_fold_of_content_hashes(delivered: list[dict[str, Any]]) -> None:
    digests = [hashlib.sha256(orjson.dumps(m, option=orjson.OPT_SORT_KEYS)).digest() for m in delivered]
    expected = reference_totals(delivered)
    assert delivery_totals(delivered, digests) == expected
    assert delivery_totals(delivered) == expected
    assert [(r["meter"], r["account"], r["hour"]) for r in delivery_totals(delivered)] == [
        (r["meter"], r["account"], r["hour"]) for r in expected
    ]


def test_float_sums_are_added_in_record_order() -> None:
    values = [0.1, 1e16, -1e16, 0.2, 3]
    delivered = [
        {"uid": str(i), "meter": "m", "account": "a", "ts": "2026-01-01T00:00:00.000Z", "measure": {"x": v}}
        for i, v in enumerate(values)
    ]
    assert delivery_totals(delivered)[0]["sums"] == tally(delivered)[0]["sums"]


sdk_uids = st.lists(
    st.builds(lambda p, n: f"{p}{n:012x}", st.sampled_from([PREFIX, "ffffffff-1111-8222-9333-"]), st.integers(0, 60)),
    max_size=50,
)


@settings(max_examples=300, deadline=None)
@given(sdk_uids, st.lists(st.text(max_size=40), max_size=3))
def test_uids_compress_as_they_always_did(uids: list[str], others: list[str]) -> None:
    for given_uids in (uids, uids + others):
        assert compress_uids(given_uids) == _compress_slowly(sorted(set(given_uids)))


def test_the_uid_digest_and_the_idempotency_key_keep_their_definitions() -> None:
    uids = ["b", "a", "c"]
    digest = hashlib.sha256()
    for uid in sorted(uids):
        digest.update(uid.encode() + b"\n")
    assert uid_digest(uids) == digest.hexdigest()
    assert idempotency_key(uids) == digest.hexdigest()[:48]
    assert uid_digest([]) == hashlib.sha256().hexdigest()


def write_batches(spool: Path, frames: int, per_frame: int, seal: bool = True) -> int:
    spool.mkdir(parents=True, exist_ok=True)
    writer = SegmentWriter(spool, "w")
    for f in range(frames):
        rows = [row(NOW_NS - 10**9, seq=f * per_frame + i) for i in range(per_frame)]
        writer.write(encode_frame(KIND_BATCH, payload(rows, 1 + f * per_frame)), 1)
    if seal:
        writer.seal()
    return frames * per_frame


def agent_config(spool: Path, state: Path, out: Path) -> Any:
    return parse_config(
        {
            "receivers": {"spool": {"directory": str(spool), "poll_interval_millis": 20}},
            "processors": {"validate": {}, "batch": {"max_measurements": 100, "timeout_millis": 50}},
            "exporters": {"file": {"path": str(out)}},
            "service": {
                "state_dir": str(state),
                "pipelines": {
                    "usage": {"receivers": ["spool"], "processors": ["validate", "batch"], "exporters": ["file"]}
                },
            },
        }
    )


def test_batch_frames_are_delivered_whole_in_batches_of_about_max_measurements(tmp_path: Path) -> None:
    n = write_batches(tmp_path / "spool", frames=12, per_frame=30)
    agent = Agent(agent_config(tmp_path / "spool", tmp_path / "state", tmp_path / "out.jsonl"))
    agent.start()
    try:
        assert agent.flush(30)
    finally:
        assert agent.stop(10)
    delivered = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert sorted(m["measure"]["seq"] for m in delivered) == list(range(n))
    entries = [e for _, e in read_entries(tmp_path / "state" / "journal.jsonl") if e["type"] == "delivery"]
    assert sum(e["count"] for e in entries) == n
    # Whole frames only: a frame half journaled before a crash would be journaled twice after
    # it. So a batch is handed on at max_measurements, give or take the frame that reached it.
    assert len(entries) >= 3
    assert all(e["count"] % 30 == 0 and e["count"] < 100 + 30 for e in entries)
    assert compress_uids(u for e in entries for s in e["sources"] for u in _expand(s["uids"])) == {
        "runs": {PREFIX: [[1, n]]}
    }


def _expand(compressed: dict[str, Any]) -> list[str]:
    from meterkit_agent.audit.journal import expand_uids

    return expand_uids(compressed)


def test_a_checkpoint_file_behind_the_journal_is_caught_up_on_start(tmp_path: Path) -> None:
    write_batches(tmp_path / "spool", frames=3, per_frame=10, seal=False)  # not retired: its writer is alive
    config = agent_config(tmp_path / "spool", tmp_path / "state", tmp_path / "out.jsonl")
    agent = Agent(config)
    agent.start()
    deadline = time.monotonic() + 30
    while not agent.checkpoint.offsets and time.monotonic() < deadline:  # flush covers what was read
        assert agent.flush(30)
        time.sleep(0.01)
    positions = dict(agent.checkpoint.offsets)
    assert positions
    assert agent.stop(10)
    # As after a crash before the next periodic save: the file is older than the journal.
    (tmp_path / "state" / "checkpoint.json").write_bytes(orjson.dumps({"journal_seq": 0, "offsets": {}}))
    again = Agent(config)
    try:
        assert again.checkpoint.offsets == positions
    finally:
        again.metrics.shutdown()
