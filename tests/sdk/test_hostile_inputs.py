"""What a hostile or careless caller can pass must never stop the flusher, raise into the
application in production mode, or make a measurement vanish uncounted: every one is
spooled or counted as lost under a reason, and every loss record stays readable."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import pytest

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


def test_str_enums_are_written_as_the_text_they_hold(tmp_path: Path) -> None:
    """A ``str`` enum as meter, account or field code: orjson refuses such a dict key, so
    strict mode (which validates and writes wire measurements) writes their text."""
    client = meterkit.Client(spool_dir=tmp_path, mode="strict", flush_interval_millis=20)
    for i in range(50):
        client.record("api_calls", account=Field.CALLS, measure={Field.CALLS: i})
    assert client.shutdown(10)
    written = spooled(tmp_path)
    assert [m["measure"] for m in written] == [{"calls": i} for i in range(50)]
    assert {m["account"] for m in written} == {"calls"} and not losses(tmp_path)


def test_a_batch_the_flusher_cannot_write_is_counted_never_dropped_unseen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever breaks a write other than a refusing spool (a fault of ours): the batch is
    off the queue, so every measurement of it is counted under ``sdk_error``."""
    client = meterkit.Client(spool_dir=tmp_path, flush_interval_millis=20)

    def broken(*_args: Any) -> None:
        raise TypeError("an encoder that gave up")

    monkeypatch.setattr(client._flusher, "_write_batch", broken)
    for i in range(50):
        client.record("api_calls", account=f"a{i}", measure={"calls": 1})
    assert client.flush(10)
    monkeypatch.undo()
    assert client.shutdown(10)
    assert losses(tmp_path) == {"sdk_error": 50} and not spooled(tmp_path)
    assert accounted(client, 50)
    assert any(isinstance(e, TypeError) for e in _guard.captured)  # reported as the SDK's own fault
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
