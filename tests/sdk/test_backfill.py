from __future__ import annotations

from pathlib import Path

import meterkit
from tests.conftest import CATALOG
from tests.sdk.helpers import spooled

ROWS = [
    {
        "meter": "data_downloaded",
        "account": "acme",
        "ts": "2025-01-01T10:00:00Z",
        "measure": {"bytes": 10},
        "event": "e1",
    },
    {
        "meter": "data_downloaded",
        "account": "acme",
        "ts": "2025-01-01T11:00:00Z",
        "measure": {"bytes": "x"},
        "event": "e2",
    },
    {"meter": "data_downloaded", "account": "", "ts": "2025-01-02T10:00:00Z", "measure": {"bytes": 30}, "event": "e3"},
    {"meter": "data_downloaded", "account": "globex", "measure": {"bytes": 40}, "event": "e4"},
    {
        "meter": "data_downloaded",
        "account": "globex",
        "ts": "2025-01-03T10:00:00+01:00",
        "measure": {"bytes": 50},
        "event": "e5",
    },
    "not a row",
    {
        "meter": "data_downloaded",
        "account": "globex",
        "ts": "2025-01-03T10:00:00Z",
        "measure": {"bytez": 1},
        "event": "e7",
    },
]


def test_bad_rows_are_all_reported_with_line_numbers_and_good_ones_kept(spool: Path) -> None:
    client = meterkit.Client(CATALOG, spool)
    result = client.submit_batch(ROWS, key_field="event")  # type: ignore[arg-type]
    assert result.accepted == 2
    assert [(p.line, p.reason, p.field) for p in result.problems] == [
        (2, "wrong_type", "measure.bytes"),
        (3, "missing_account", "account"),
        (4, "missing_ts", "ts"),
        (6, "bad_shape", None),
        (7, "unknown_field", "measure.bytez"),
    ]
    client.shutdown(5)
    got = spooled(spool)
    assert [(m["ts"], m["measure"]["bytes"]) for m in got] == [
        ("2025-01-01T10:00:00.000Z", 10),
        ("2025-01-03T09:00:00.000Z", 50),
    ]


def test_rerunning_a_backfill_produces_the_same_uids(tmp_path: Path) -> None:
    runs = []
    for n in range(2):
        spool = tmp_path / f"run{n}"
        client = meterkit.Client(CATALOG, spool)
        client.submit_batch(ROWS, key_field="event")  # type: ignore[arg-type]
        keyless = [{k: v for k, v in r.items() if k != "event"} for r in ROWS if isinstance(r, dict)]
        client.submit_batch(keyless)  # content-derived uids
        client.shutdown(5)
        runs.append([m["uid"] for m in spooled(spool)])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 4  # key-derived and content-derived uids differ


def test_explicit_uids_are_kept(spool: Path) -> None:
    client = meterkit.Client(None, spool)
    result = client.submit_batch(
        [{"meter": "m", "account": "a", "ts": "2024-06-01T00:00:00Z", "uid": "src-1", "measure": {"n": 1}}]
    )
    client.shutdown(5)
    assert result.accepted == 1 and [m["uid"] for m in spooled(spool)] == ["src-1"]
