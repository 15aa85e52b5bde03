"""The public API as a user meets it: record, meter (decorator and context manager, sync
and async), context across threads and await, strict and production modes."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import meterkit
from meterkit.testing import capture_measurements
from tests.conftest import CATALOG
from tests.sdk.helpers import spooled


def test_record_lands_in_the_spool(spool: Path) -> None:
    meterkit.configure(catalog=CATALOG, spool_dir=spool)
    meterkit.record("data_downloaded", account="acme", measure={"bytes": 10}, who={"user": "u1"})
    assert meterkit.flush(5)
    [m] = spooled(spool)
    assert m["meter"] == "data_downloaded" and m["account"] == "acme"
    assert m["measure"] == {"bytes": 10} and m["who"] == {"user": "u1"}
    assert m["ts"].endswith("Z") and len(m["ts"]) == 24


def test_caller_dicts_are_copied_at_record_time() -> None:
    with capture_measurements() as captured:
        fields = {"bytes": 1}
        meterkit.record("m", account="a", measure=fields)
        fields["bytes"] = 999
    assert captured.measurements[0]["measure"] == {"bytes": 1}


def test_decorator_records_one_measurement_per_call_with_duration_and_outcome() -> None:
    @meterkit.meter("api_calls", account="acme", measure={"calls": 1}, duration="seconds", outcome="status")
    def handler(fail: bool) -> str:
        if fail:
            raise KeyError("boom")
        return "ok"

    with capture_measurements(CATALOG) as captured:
        assert handler(False) == "ok"
        with pytest.raises(KeyError, match="boom"):  # never swallowed
            handler(True)
    ok, failed = captured.measurements
    assert ok["other"] == {"status": "ok"} and failed["other"] == {"status": "error"}
    assert ok["measure"]["calls"] == 1 and 0 <= ok["measure"]["seconds"] < 1
    assert ok["uid"] != failed["uid"]


def test_outcome_can_name_its_category() -> None:
    @meterkit.meter("jobs", account="acme", outcome="what.result")
    def job() -> None:
        pass

    with capture_measurements() as captured:
        job()
    assert captured.measurements[0]["what"] == {"result": "ok"}
    with pytest.raises(ValueError, match="string one"):
        meterkit.meter("jobs", outcome="measure.result")


def test_context_manager_lets_the_block_add_fields() -> None:
    with capture_measurements(CATALOG) as captured:
        with meterkit.meter("data_downloaded", account="acme") as m:
            m.measure["bytes"] = 2048
            m.set(who={"user": "u7"}, where={"region": "eu"})
        with pytest.raises(RuntimeError), meterkit.meter("session_duration", account="acme", duration="seconds"):
            raise RuntimeError("still recorded")
    first, second = captured.measurements
    assert first["measure"] == {"bytes": 2048} and first["who"] == {"user": "u7"} and first["where"] == {"region": "eu"}
    assert second["meter"] == "session_duration" and "seconds" in second["measure"]


def test_decorated_function_adds_fields_through_active_meter() -> None:
    @meterkit.meter("data_downloaded", account="acme")
    def download(n: int) -> None:
        active = meterkit.active_meter()
        assert active is not None
        active.measure["bytes"] = n

    with capture_measurements(CATALOG) as captured:
        download(5)
        download(7)
    assert [m["measure"]["bytes"] for m in captured.measurements] == [5, 7]
    assert meterkit.active_meter() is None


def test_async_decorator_and_async_context_manager() -> None:
    @meterkit.meter("api_calls", measure={"calls": 1}, duration="seconds", outcome="status")
    async def handler(delay: float) -> float:
        await asyncio.sleep(delay)
        return delay

    async def main() -> None:
        async with meterkit.context(account="acme"):
            await asyncio.gather(handler(0.01), handler(0.02))
            async with meterkit.meter("data_downloaded") as m:
                m.measure["bytes"] = 1

    with capture_measurements(CATALOG) as captured:
        asyncio.run(main())
    calls = [m for m in captured.measurements if m["meter"] == "api_calls"]
    assert len(calls) == 2 and all(m["account"] == "acme" for m in captured.measurements)
    assert sorted(m["measure"]["seconds"] >= 0.01 for m in calls) == [True, True]


def test_context_fills_account_and_fields_and_explicit_arguments_win() -> None:
    with capture_measurements() as captured:
        with meterkit.context(account="acme", who={"user": "u1", "team": "t1"}, where={"region": "eu"}):
            meterkit.record("m", measure={"n": 1})
            with meterkit.context(who={"user": "u2"}):
                meterkit.record("m", measure={"n": 2}, where={"region": "us"})
            meterkit.record("m", account="other", measure={"n": 3})
        meterkit.record("m", account="outside", measure={"n": 4})
    one, two, three, four = captured.measurements
    assert one["account"] == "acme" and one["who"] == {"user": "u1", "team": "t1"}
    assert two["who"] == {"user": "u2", "team": "t1"} and two["where"] == {"region": "us"}
    assert three["account"] == "other"
    assert four["account"] == "outside" and "who" not in four


def test_context_as_decorator_and_across_threads_with_copied_context() -> None:
    @meterkit.context(account="decorated")
    def work() -> None:
        meterkit.record("m", measure={"n": 1})

    results: list[str] = []

    with capture_measurements() as captured:
        work()
        with meterkit.context(account="acme"):
            ctx = contextvars.copy_context()
            t = threading.Thread(target=ctx.run, args=(meterkit.record, "m"), kwargs={"measure": {"n": 2}})
            t.start()
            t.join()
            with ThreadPoolExecutor(2) as pool:
                pool.submit(contextvars.copy_context().run, meterkit.record, "m", measure={"n": 3}).result()
        results = [m["account"] for m in captured.measurements]
    assert results == ["decorated", "acme", "acme"]


def test_context_follows_await_into_tasks() -> None:
    async def child(n: int) -> None:
        await asyncio.sleep(0)
        meterkit.record("m", measure={"n": n})

    async def main() -> None:
        for account in ("a", "b"):
            with meterkit.context(account=account):
                await asyncio.gather(asyncio.create_task(child(1)), asyncio.create_task(child(2)))

    with capture_measurements() as captured:
        asyncio.run(main())
    assert sorted(m["account"] for m in captured.measurements) == ["a", "a", "b", "b"]


def test_many_threads_record_concurrently_without_loss(spool: Path) -> None:
    meterkit.configure(spool_dir=spool, max_queue_size=1024, max_batch_size=256)

    def worker(i: int) -> None:
        with meterkit.context(account=f"acct{i}"):
            for _ in range(5000):
                meterkit.record("m", measure={"n": 1})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert meterkit.flush(30)
    records = spooled(spool)
    assert len(records) == 40_000
    assert len({r["uid"] for r in records}) == 40_000
    assert meterkit.stats()["lost"] == {}


def test_production_mode_never_raises_even_on_misuse(spool: Path) -> None:
    meterkit.configure(spool_dir=spool)
    meterkit.record("m", account="a", measure="not a mapping")  # type: ignore[arg-type]
    meterkit.record(None, account="a")  # type: ignore[arg-type]
    meterkit.record("m", account=12345)  # type: ignore[arg-type]
    assert meterkit.flush(5)
    lost = meterkit.stats()["lost"]
    assert lost == {"rejected:bad_argument": 1, "rejected:bad_meter_code": 1, "rejected:missing_account": 1}


def test_strict_mode_raises_for_misuse() -> None:
    with capture_measurements() as _, pytest.raises(meterkit.MeasurementError, match="arguments unusable") as info:
        meterkit.record("m", account="a", measure="not a mapping")  # type: ignore[arg-type]
    assert info.value.reason == "bad_argument" and info.value.meter == "m"


def test_unconfigured_sdk_configures_itself_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METERKIT_SPOOL_DIR", str(tmp_path / "envspool"))
    meterkit.record("m", account="a", measure={"n": 1})
    assert meterkit.flush(5)
    assert len(spooled(tmp_path / "envspool")) == 1


def test_configure_replaces_and_flushes_the_previous_client(tmp_path: Path) -> None:
    meterkit.configure(spool_dir=tmp_path / "one")
    meterkit.record("m", account="a", measure={"n": 1})
    meterkit.configure(spool_dir=tmp_path / "two")
    meterkit.record("m", account="a", measure={"n": 2})
    meterkit.shutdown()
    assert [m["measure"]["n"] for m in spooled(tmp_path / "one")] == [1]
    assert [m["measure"]["n"] for m in spooled(tmp_path / "two")] == [2]


def test_shutdown_is_idempotent_and_late_records_are_still_written(spool: Path) -> None:
    client = meterkit.Client(spool_dir=spool)
    client.record("m", account="a", measure={"n": 1})
    assert client.shutdown(5)
    assert client.shutdown(5)
    client.record("m", account="a", measure={"n": 2})  # e.g. from another atexit hook
    assert sorted(m["measure"]["n"] for m in spooled(spool)) == [1, 2]


def test_capture_reports_rejections_in_production_mode() -> None:
    with capture_measurements(CATALOG, mode="production") as captured:
        meterkit.record("api_calls", account="a", measure={"nope": 1})
    assert captured.measurements == []
    assert captured.rejected[0]["reason"] == "unknown_field"
    losses = [c for c in captured.controls if c["type"] == "losses"]
    assert losses[0]["entries"][0]["reason"] == "rejected:unknown_field"
