"""The ASGI middleware under FastAPI, through its TestClient: the account from a header or
a JWT claim, status-aware outcomes, 429s, and the sync ``yield`` dependency of issue 15."""

from __future__ import annotations

import base64
import contextvars
import json
import logging
from collections.abc import Iterator
from typing import Any

import fastapi.dependencies.utils as fastapi_utils
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.testclient import TestClient

import meterkit
from meterkit.integrations import jwt_claim
from meterkit.integrations.fastapi import MeterkitMiddleware, keep_scope_in_sync_dependencies
from meterkit.testing import Captured, capture_measurements

from .conftest import CATALOG, by_meter

_probe: contextvars.ContextVar[str] = contextvars.ContextVar("probe", default="unset")


def account_dependency() -> Iterator[None]:
    """The pattern of issue 15: a sync dependency that yields inside meterkit.context."""
    with meterkit.context(account="acme"):
        yield


def probe_dependency() -> Iterator[None]:
    """The same pattern with a bare ContextVar: what meterkit.context does underneath."""
    token = _probe.set("set")
    yield
    _probe.reset(token)


def dependency_app() -> FastAPI:
    app = FastAPI()

    @app.get("/download", dependencies=[Depends(account_dependency)])
    def download() -> dict[str, str]:
        meterkit.record("downloads", measure={"bytes": 10})
        return {"ok": "yes"}

    @app.get("/async-download", dependencies=[Depends(account_dependency)])
    async def async_download() -> dict[str, str]:
        meterkit.record("downloads", measure={"bytes": 20})
        return {"ok": "yes"}

    @app.get("/probe", dependencies=[Depends(probe_dependency)])
    def probe() -> dict[str, str]:
        return {"probe": _probe.get()}

    return app


@pytest.fixture
def fastapi_as_shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """FastAPI's own dependency runner, as before the integration wrapped it."""
    runner = fastapi_utils.contextmanager_in_threadpool
    monkeypatch.setattr(fastapi_utils, "contextmanager_in_threadpool", getattr(runner, "meterkit_original", runner))


@pytest.mark.usefixtures("fastapi_as_shipped")
def test_the_reported_bug_a_sync_yield_dependency_loses_its_scope(caplog: pytest.LogCaptureFixture) -> None:
    with capture_measurements(CATALOG, mode="production") as captured:
        client = TestClient(dependency_app())
        with pytest.raises(ValueError, match="was created in a different Context"):
            client.get("/probe")
        assert client.get("/download").status_code == 200
    # The account set in the dependency never reached the endpoint...
    assert captured.measurements == []
    assert [(r["meter"], r["reason"]) for r in captured.rejected] == [("downloads", "missing_account")]
    # ...and leaving the scope from another context no longer raises: it is logged once.
    assert "left in another thread's context" in caplog.text


def test_the_integration_keeps_the_scope_of_a_sync_yield_dependency(captured: Captured) -> None:
    keep_scope_in_sync_dependencies()
    keep_scope_in_sync_dependencies()  # idempotent: wraps once
    assert not hasattr(fastapi_utils.contextmanager_in_threadpool.meterkit_original, "meterkit_original")
    client = TestClient(dependency_app())
    assert client.get("/probe").json() == {"probe": "unset"}  # other libraries' variables: as FastAPI leaves them
    assert client.get("/download").status_code == 200
    assert client.get("/async-download").status_code == 200
    assert [(m["account"], m["measure"]) for m in by_meter(captured, "downloads")] == [
        ("acme", {"bytes": 10}),
        ("acme", {"bytes": 20}),
    ]


def metered_app(**options: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(
        MeterkitMiddleware, meter="api_calls", measure={"calls": 1}, outcome="outcome", status="status", **options
    )

    @app.get("/ok")
    def ok() -> dict[str, str]:
        meterkit.active_meter().what["endpoint"] = "/ok"  # type: ignore[union-attr]
        meterkit.record("downloads", measure={"bytes": 5})  # the request's account, in a threadpool thread
        return {"ok": "yes"}

    @app.get("/missing")
    async def missing() -> None:
        raise HTTPException(404)

    @app.get("/broken")
    async def broken() -> Any:
        from fastapi.responses import JSONResponse

        return JSONResponse({"detail": "down"}, status_code=503)

    @app.get("/crash")
    def crash() -> None:
        raise RuntimeError("boom")

    @app.get("/limited")
    async def limited() -> None:
        raise meterkit.LimitExceeded(meterkit.Decision(False, 0, 2.01, "rate limited", False, "test"))

    @app.get("/never")
    async def never() -> None:
        raise meterkit.LimitExceeded(meterkit.Decision(False, 0, float("inf"), "quantity above burst", False, "t"))

    return app


def test_requests_are_metered_with_status_aware_outcomes(captured: Captured) -> None:
    client = TestClient(metered_app(account="X-Account"), raise_server_exceptions=False)
    answers = {path: client.get(path, headers={"x-account": "acme"}) for path in ("/ok", "/missing", "/broken")}
    assert {p: r.status_code for p, r in answers.items()} == {"/ok": 200, "/missing": 404, "/broken": 503}
    assert client.get("/crash", headers={"X-Account": "acme"}).status_code == 500
    calls = by_meter(captured, "api_calls")
    assert [(m["account"], m["other"]) for m in calls] == [
        ("acme", {"outcome": "ok", "status": "200"}),
        ("acme", {"outcome": "client_error", "status": "404"}),
        ("acme", {"outcome": "server_error", "status": "503"}),
        ("acme", {"outcome": "error"}),
    ]
    assert calls[0]["what"] == {"endpoint": "/ok"} and all(m["measure"]["calls"] == 1 for m in calls)
    assert [(m["account"], m["measure"]) for m in by_meter(captured, "downloads")] == [("acme", {"bytes": 5})]


def test_limit_exceeded_becomes_a_429_with_retry_after_rounded_up(captured: Captured) -> None:
    client = TestClient(metered_app(account="X-Account"))
    answer = client.get("/limited", headers={"X-Account": "acme"})
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "3"
    assert answer.json() == {"detail": "limit exceeded", "retry_after": 3}
    never = client.get("/never", headers={"X-Account": "acme"})
    assert never.status_code == 429 and "retry-after" not in never.headers
    assert [m["other"] for m in by_meter(captured, "api_calls")] == [
        {"outcome": "limited", "status": "429"},
        {"outcome": "limited", "status": "429"},
    ]


def _token(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part(claims)}.c2lnbmF0dXJl"


def test_the_account_from_a_verified_jwt_claim(captured: Captured, caplog: pytest.LogCaptureFixture) -> None:
    client = TestClient(metered_app(account=jwt_claim("org", verified=True)))
    assert client.get("/ok", headers={"Authorization": f"Bearer {_token({'org': 'globex'})}"}).status_code == 200
    with caplog.at_level(logging.ERROR, "meterkit"):
        pass
    assert [m["account"] for m in by_meter(captured, "api_calls")] == ["globex"]
    with pytest.raises(meterkit.ConfigError, match="without verifying"):
        jwt_claim("org", verified=False)
