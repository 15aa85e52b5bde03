"""The correction control record (who corrected what, when and why): believed only with
its reason, author, instant and uids, journaled as a ``correction`` entry, and a malformed
one quarantined alone like any bad control record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from meterkit._corrections import replacement_uid, reversal_uid
from meterkit._spool import KIND_CONTROL, KIND_MEASUREMENT
from meterkit_agent.audit.journal import expand_uids
from meterkit_agent.pipeline.control import MAX_CORRECTED_PER_RECORD, control_problem
from meterkit_agent.pipeline.prepare import Preparer
from meterkit_agent.pipeline.telemetry import AgentMetrics
from meterkit_agent.receivers.spool import Envelope

ORIGINALS = [f"c21222b7-30be-8cee-b0d6-8000000000{i:02x}" for i in range(3)]


def record(**changes: Any) -> dict[str, Any]:
    good = {
        "type": "correction",
        "id": "5f0e1c1a-4c1b-5a55-9d6a-0b7f2b8f4e11",
        "action": "amend",
        "reason": "customer dispute #4411",
        "by": "alice@billing-host",
        "at": "2026-02-03T10:00:00.000Z",
        "of": ORIGINALS,
        "uids": [f(u) for u in ORIGINALS for f in (reversal_uid, replacement_uid)],
    }
    return {k: v for k, v in (good | changes).items() if v is not None}  # None: the key is absent


def envelope(payload: Any, kind: int, end: int) -> Envelope:
    return Envelope("spool/seg-1.mks", "7@host", None, end, kind, orjson.dumps(payload), 0)


@pytest.fixture
def metrics(tmp_path: Path) -> Iterator[AgentMetrics]:
    m = AgentMetrics(tmp_path, lambda: 0)
    yield m
    m.shutdown()


def test_a_well_formed_correction_is_believed() -> None:
    assert control_problem(record()) is None
    assert control_problem(record(action="revert", batch="import-2026-01")) is None
    assert control_problem(record(of=["x"] * MAX_CORRECTED_PER_RECORD)) is None
    assert control_problem(record(at="2026-02-03T11:00:00+01:00")) is None  # any spelling of an instant


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"reason": ""}, "correction.reason"),
        ({"reason": "   "}, "correction.reason"),
        ({"reason": None}, "correction.reason"),  # absent: --reason is required
        ({"by": ""}, "correction.by"),
        ({"reason": "ok\n2026-02-03 INFO approved by cfo"}, "correction.reason"),  # a forged journal line
        ({"reason": "\x1b[2Khidden"}, "correction.reason"),  # an escape sequence
        ({"reason": "x" * 2001}, "correction.reason"),
        ({"by": "alice\r@host"}, "correction.by"),
        ({"batch": "bf\x00"}, "correction.batch"),
        ({"at": "yesterday"}, "correction.at"),
        ({"at": "2026-02-03T10:00:00"}, "correction.at"),  # no offset: not an instant
        ({"action": "delete"}, "correction.action"),
        ({"of": []}, "correction.of"),
        ({"of": "c21222b7"}, "correction.of"),
        ({"of": ["x"] * (MAX_CORRECTED_PER_RECORD + 1)}, "correction.of"),
        ({"uids": [" padded"]}, "correction.uids.0"),
        ({"uids": ["a\nb"]}, "correction.uids.0"),
        ({"uids": [3]}, "correction.uids.0"),
        ({"batch": ""}, "correction.batch"),
        ({"id": 7}, "correction.id"),
    ],
)
def test_a_malformed_correction_is_named(changes: dict[str, Any], named: str) -> None:
    problem = control_problem(record(**changes))
    assert problem is not None and problem.startswith(named), problem
    if "control character" in problem:
        assert "U+00" in problem  # named, so the quarantine says which


def test_corrections_are_journaled_and_a_bad_one_is_quarantined_alone(metrics: AgentMetrics) -> None:
    measurement = {"uid": "m-1", "meter": "jobs", "account": "acme", "ts": "2026-02-01T10:00:00.000Z"}
    batch = [
        envelope(record(extra_field="a newer SDK's"), KIND_CONTROL, 10),
        envelope(record(reason=""), KIND_CONTROL, 20),
        envelope(measurement, KIND_MEASUREMENT, 30),
        envelope(record(action="revert", batch="import-2026-01", of=ORIGINALS[:1]), KIND_CONTROL, 40),
    ]
    p = Preparer([], metrics)(batch)

    assert [m["uid"] for m in p.records] == ["m-1"]
    assert [(reason, stage) for _, reason, _, stage in p.broken] == [("invalid:control_record", "control")]
    assert "correction.reason" in p.broken[0][2]
    assert p.positions == {"spool/seg-1.mks": 40}

    amend, revert = p.journal
    assert amend["type"] == "correction" and "at" not in amend  # the journal stamps its own "at"
    assert {k: amend[k] for k in ("action", "reason", "by", "made_at", "source", "writer", "extra_field")} == {
        "action": "amend",
        "reason": "customer dispute #4411",
        "by": "alice@billing-host",
        "made_at": "2026-02-03T10:00:00.000Z",
        "source": "spool/seg-1.mks",
        "writer": "7@host",
        "extra_field": "a newer SDK's",
    }
    assert expand_uids(amend["of"]) == ORIGINALS  # SDK uids: kept as one run
    first, last = (int(u[24:], 16) for u in (ORIGINALS[0], ORIGINALS[-1]))
    assert amend["of"] == {"runs": {ORIGINALS[0][:24]: [[first, last]]}}
    assert sorted(expand_uids(amend["uids"])) == sorted(record()["uids"])
    assert (revert["action"], revert["batch"], expand_uids(revert["of"])) == ("revert", "import-2026-01", ORIGINALS[:1])
