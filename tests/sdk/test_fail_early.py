"""Strict mode checks the names a ``meterkit.meter`` is made with when it is made: a
misspelled meter or field fails at decoration, not when the function first runs. Production
mode never raises and still counts the bad measurement when it is recorded."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import meterkit
from meterkit.testing import capture_measurements
from tests.conftest import CATALOG


@pytest.fixture
def strict() -> Iterator[Any]:
    with capture_measurements(CATALOG) as captured:
        yield captured


@pytest.mark.parametrize(
    ("kwargs", "reason", "field"),
    [
        ({"code": "api_request"}, "unknown_meter", None),
        ({"code": "api_calls", "measure": {"call": 1}}, "unknown_field", "measure.call"),
        ({"code": "api_calls", "who": {"endpoint": "/x"}}, "wrong_category", "who.endpoint"),
        ({"code": "api_calls", "duration": "secs"}, "unknown_field", "measure.secs"),
        ({"code": "api_calls", "duration": "endpoint"}, "wrong_category", "measure.endpoint"),
        ({"code": "api_calls", "outcome": "outcome"}, "unknown_field", "other.outcome"),
        ({"code": "api_calls", "outcome": "what.status"}, "wrong_category", "what.status"),
    ],
)
def test_strict_meter_names_the_bad_name_when_made(
    strict: Any, kwargs: dict[str, Any], reason: str, field: str | None
) -> None:
    code = kwargs.pop("code")
    with pytest.raises(meterkit.MeasurementError) as info:
        meterkit.meter(code, account="acme", **kwargs)
    assert info.value.reason == reason and info.value.meter == code and info.value.field == field
    assert code in str(info.value)
    if field is not None:
        assert field.rpartition(".")[2] in str(info.value)
    assert strict.measurements == []


def test_strict_decorator_fails_at_decoration_before_the_function_runs(strict: Any) -> None:
    ran = []
    with pytest.raises(meterkit.MeasurementError, match="api_request") as info:

        @meterkit.meter("api_request", account="acme")
        def handler() -> None:
            ran.append(1)

    assert info.value.reason == "unknown_meter" and ran == []


def test_strict_meter_with_known_names_is_made_and_records(strict: Any) -> None:
    @meterkit.meter("api_calls", account="acme", measure={"calls": 1}, duration="seconds", outcome="status")
    def handler() -> str:
        return "ok"

    assert handler() == "ok"
    with meterkit.meter("data_downloaded", account="acme", who={"user": "u"}) as m:
        m.measure["bytes"] = 3
    calls, download = strict.measurements
    assert calls["other"] == {"status": "ok"} and calls["measure"]["calls"] == 1
    assert download["measure"] == {"bytes": 3} and download["who"] == {"user": "u"}


def test_strict_meter_checks_against_its_own_client(tmp_path: Path) -> None:
    client = meterkit.Client(CATALOG, tmp_path / "spool", mode="strict")
    try:
        with pytest.raises(meterkit.MeasurementError, match="no data field 'byte'") as info:
            meterkit.meter("data_downloaded", measure={"byte": 1}, client=client)
        assert info.value.field == "measure.byte"
    finally:
        client.shutdown(5)


def test_production_meter_never_raises_and_counts_at_record_time(tmp_path: Path) -> None:
    # sync durability validates on the caller's thread, so the loss is counted here, not by the agent
    meterkit.configure(catalog=CATALOG, spool_dir=tmp_path / "spool", mode="production", durability="sync")
    try:
        spec = meterkit.meter("api_request", account="acme", measure={"calls": 1})  # no raise here

        @spec
        def handler() -> str:
            return "done"

        assert handler() == "done"  # nor here
        assert meterkit.flush(5)
        assert meterkit.stats()["lost"] == {"rejected:unknown_meter": 1}
    finally:
        meterkit.shutdown(5)


def test_a_decorator_made_before_configure_is_checked_by_configure(tmp_path: Path) -> None:
    """A decorator runs at import, before the application configures meterkit: strict
    mode names its misspelled meter when ``configure`` runs, not on the first call."""

    @meterkit.meter("api_request")  # the catalog's meter is api_calls
    def handler() -> str:
        return "ok"

    with pytest.raises(meterkit.MeasurementError) as info:
        meterkit.configure(CATALOG, tmp_path / "spool", mode="strict")
    assert info.value.reason == "unknown_meter" and info.value.meter == "api_request"
    assert meterkit._api._client is None  # configure failed whole: no client was installed

    @meterkit.meter("api_calls", account="acme", measure={"calls": 1})
    def good() -> str:
        return "ok"

    del handler, info  # the misspelled one is gone (as after a fix and a restart); good remains
    gc.collect()
    meterkit.configure(CATALOG, tmp_path / "spool", mode="strict")
    assert good() == "ok"
