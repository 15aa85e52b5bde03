"""What a hostile or careless caller can pass must never stop the flusher, raise into the
application in production mode, or make a measurement vanish uncounted: every one is
spooled or counted as lost under a reason, and every loss record stays readable."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import meterkit
from meterkit import _guard
from meterkit._losses import ENTRIES_PER_RECORD, MAX_KEY_TEXT

from .helpers import controls, losses, spooled


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")

    def __str__(self) -> str:
        raise RuntimeError("no str either")


def accounted(client: meterkit.Client, recorded: int) -> bool:
    s = client.stats()
    return s["written"] + s["queued"] + s["held"] + sum(s["lost"].values()) == recorded


def test_a_lone_surrogate_in_an_account_is_refused_and_the_flusher_goes_on(tmp_path: Path) -> None:
    client = meterkit.Client(spool_dir=tmp_path, flush_interval_millis=20)
    client.record("api_calls", account="user\udcff", measure={"calls": 1})  # as os.fsdecode makes
    assert client.flush(10)
    for i in range(100):
        client.record("api_calls", account=f"a{i}", measure={"calls": 1})
    assert client.flush(10)
    assert client.shutdown(10)
    assert len(spooled(tmp_path)) == 100  # the good ones after it are all written
    lost = losses(tmp_path)
    assert sum(lost.values()) == 1 and all(reason.startswith("rejected:") for reason in lost)
    entry = next(e for c in controls(tmp_path, "losses") for e in c["entries"])
    assert entry["account"] == "user\\udcff"  # escaped, so the loss record can be written
    assert accounted(client, 101)


def test_arguments_whose_repr_raises_never_raise_into_the_application(tmp_path: Path) -> None:
    client = meterkit.Client(spool_dir=tmp_path, flush_interval_millis=20)
    client.record(Unprintable(), account=Unprintable(), measure="x")  # type: ignore[arg-type]
    client.record("api_calls", account=Unprintable(), measure={"calls": 1})  # type: ignore[arg-type]
    client.record("api_calls", account="acme", measure={"calls": Unprintable()})
    assert client.shutdown(10)
    assert sum(losses(tmp_path).values()) == 3
    assert accounted(client, 3)


class Field(str, enum.Enum):
    CALLS = "calls"


def test_a_batch_the_encoder_refuses_is_counted_never_dropped_unseen(tmp_path: Path) -> None:
    """A ``str`` enum as a field code passes strict validation but not orjson's key check:
    the batch it is in cannot be written, and every measurement of it is counted."""
    client = meterkit.Client(spool_dir=tmp_path, mode="strict", flush_interval_millis=20)
    for i in range(50):
        client.record("api_calls", account=f"a{i}", measure={Field.CALLS: 1})
    assert client.shutdown(10)
    written = len(spooled(tmp_path))
    assert written + losses(tmp_path).get("sdk_error", 0) == 50
    assert accounted(client, 50)
    # the flusher reported it as its own fault (logged once, in production)
    assert any(isinstance(e, TypeError) for e in _guard.captured)
    _guard.captured.clear()


def test_a_decorated_function_never_sees_the_meter_fail(tmp_path: Path) -> None:
    client = meterkit.Client(spool_dir=tmp_path, durability="sync")
    meterkit_meter: Any = meterkit.meter

    @meterkit_meter("api_calls", account=Unprintable(), measure={"calls": 1}, client=client)
    def handler() -> str:
        return "ok"

    assert handler() == "ok"
    assert client.shutdown(10)


def test_loss_records_stay_readable_however_many_accounts_are_lost(tmp_path: Path) -> None:
    client = meterkit.Client(spool_dir=tmp_path, flush_interval_millis=20)
    n = ENTRIES_PER_RECORD * 2 + 10
    for i in range(n):  # each refused (not finite), each under its own long account
        client.record("api_calls", account=f"{i:06d}" + "x" * 500, measure={"calls": float("nan")})
    assert client.shutdown(30)
    records = controls(tmp_path, "losses")
    entries = [e for c in records for e in c["entries"]]
    assert len(records) >= 3 and all(len(c["entries"]) <= ENTRIES_PER_RECORD for c in records)
    assert sum(e["count"] for e in entries) == n  # every loss is in a record the reader could read
    assert all(len(e["account"] or "") <= MAX_KEY_TEXT for e in entries)
