"""What every integration shares: extractors, outcomes, Retry-After, the missing-framework message."""

from __future__ import annotations

import base64
import importlib
import sys

import pytest

import meterkit
from meterkit.integrations import _common, header, jwt_claim


def _get(headers: dict[str, str]) -> _common.HeaderGetter:
    return lambda name: {k.lower(): v for k, v in headers.items()}.get(name.lower())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _token(payload: bytes) -> str:
    return f"e30.{_b64(payload)}.sig"


@pytest.mark.parametrize(
    ("authorization", "account"),
    [
        ("Bearer " + _token(b'{"org": "acme"}'), "acme"),
        ("bearer " + _token(b'{"org": 42}'), "42"),
        ("Bearer " + _token(b'{"org": true}'), None),
        ("Bearer " + _token(b'{"other": "x"}'), None),
        ("Bearer " + _token(b"[1]"), None),
        ("Bearer e30.!!!.sig", None),
        ("Bearer only.two", None),
        ("Basic " + _token(b'{"org": "acme"}'), None),
        ("", None),
    ],
)
def test_jwt_claim_reads_only_well_formed_tokens(authorization: str, account: str | None) -> None:
    assert jwt_claim("org", verified=True).from_headers(_get({"Authorization": authorization})) == account


def test_extractors_of_each_kind() -> None:
    get = _get({"X-Account": "acme"})
    assert _common.extract_account("x-account", get) == "acme"
    assert _common.extract_account(header("X-ACCOUNT"), get) == "acme"
    assert _common.extract_account(lambda request: request["a"], None, {"a": "globex"}) == "globex"
    assert _common.extract_account(lambda request: 1 / 0, None, {}) is None  # a broken extractor: no account
    assert _common.extract_account(None, get) is None


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "ok"),
        (302, "ok"),
        (400, "client_error"),
        (404, "client_error"),
        (429, "limited"),
        (500, "server_error"),
        (503, "server_error"),
    ],
)
def test_outcome_of_status(status: int, outcome: str) -> None:
    assert _common.outcome_of_status(status) == outcome


@pytest.mark.parametrize(
    ("retry_after", "header_value"), [(0.0, 1), (0.001, 1), (1.0, 1), (1.2, 2), (59.99, 60), (float("inf"), None)]
)
def test_retry_after_is_whole_seconds_rounded_up(retry_after: float, header_value: int | None) -> None:
    exc = meterkit.LimitExceeded(meterkit.Decision(False, 0, retry_after, "rate limited", False, "t"))
    assert _common.retry_after_seconds(exc) == header_value


@pytest.mark.parametrize(("module", "extra"), [("django", "django"), ("celery", "celery"), ("fastapi", "fastapi")])
def test_a_missing_framework_names_the_pip_extra(monkeypatch: pytest.MonkeyPatch, module: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    for name in [
        n for n in sys.modules if n.startswith(f"{module}.") or (n.startswith("meterkit.integrations.") and module in n)
    ]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=rf"pip install 'meterkit\[{extra}\]'"):
        importlib.import_module(f"meterkit.integrations.{module}")


def test_outcome_fields_must_be_string_categories() -> None:
    with pytest.raises(ValueError, match="string one"):
        _common.Metered("api_calls", outcome="measure.outcome")
