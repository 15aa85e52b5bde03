"""The m3ter exporter's request shape, client-credentials exchange and hosts (``responses``),
the hosts checked against the official ``m3ter`` client's own."""

from __future__ import annotations

import re

import httpx
import m3ter
import pytest
import responses
from pydantic import SecretStr

from meterkit_agent.component import Misconfigured, RetryLater
from meterkit_agent.exporters.exporterhelper import idempotency_key
from meterkit_agent.exporters.m3ter import M3terExporter, M3terExporterConfig
from tests.agent.exporters.helpers import FAST, URL, body_of, m


def test_m3ter_request_shape_with_bearer_token(http: responses.RequestsMock) -> None:
    http.post(URL, json={"result": "accepted"})
    exporter = M3terExporter(
        "m3ter", M3terExporterConfig(base_url="http://backend.test", org_id="o1", token=SecretStr("t0k"), retry=FAST)
    )
    assert exporter.export([m("1"), m("2")]) == []
    call = http.calls[0]
    assert call.request.headers["Authorization"] == "Bearer t0k"
    assert call.request.headers["Content-Encoding"] == "gzip"
    assert call.request.headers["Idempotency-Key"] == idempotency_key(["1", "2"])
    assert body_of(call) == {"measurements": [m("1"), m("2")]}


def client_credentials_exporter() -> M3terExporter:
    return M3terExporter(
        "m3ter",
        M3terExporterConfig(
            base_url="http://backend.test", org_id="o1", client_id="id", client_secret=SecretStr("sec"), retry=FAST
        ),
    )


def test_m3ter_client_credentials_exchange_and_refresh_on_401(http: responses.RequestsMock) -> None:
    token = http.post("http://backend.test/oauth/token", json={"access_token": "first", "expires_in": 3600})
    http.post(URL, status=401)
    http.post(URL, json={"result": "accepted"})
    exporter = client_credentials_exporter()
    with pytest.raises(RetryLater, match="token refreshed"):
        exporter.export([m("1")])
    assert exporter.export([m("1")]) == []
    assert token.call_count == 2  # refreshed after the 401
    assert http.calls[0].request.headers["Authorization"].startswith("Basic ")
    keys = {c.request.headers.get("Idempotency-Key") for c in http.calls if c.request.url == URL}
    assert keys == {idempotency_key(["1"])}  # the retry carries the same key


TOKEN_ANSWER = {"access_token": "tok", "expires_in": 3600, "token_type": "Bearer"}


def credentials(base_url: str | None) -> M3terExporterConfig:
    return M3terExporterConfig(
        base_url=base_url, org_id="o1", client_id="id", client_secret=SecretStr("sec"), retry=FAST
    )


def test_m3ter_by_default_posts_to_the_ingest_host_and_gets_tokens_from_the_api_host(
    http: responses.RequestsMock,
) -> None:
    token = http.post("https://api.m3ter.com/oauth/token", json=TOKEN_ANSWER)
    ingest = http.post("https://ingest.m3ter.com/organizations/o1/measurements", json={"result": "accepted"})
    assert M3terExporter("m3ter", credentials(None)).export([m("1")]) == []
    assert token.call_count == 1 and ingest.call_count == 1
    assert ingest.calls[0].request.headers["Authorization"] == "Bearer tok"


def test_m3ter_a_base_url_replaces_both_hosts(http: responses.RequestsMock) -> None:
    token = http.post("https://m3ter.staging.test/oauth/token", json=TOKEN_ANSWER)
    ingest = http.post("https://m3ter.staging.test/organizations/o1/measurements", json={"result": "accepted"})
    assert M3terExporter("m3ter", credentials("https://m3ter.staging.test/")).export([m("1")]) == []
    assert token.call_count == 1 and ingest.call_count == 1


@pytest.mark.parametrize("spelled", ["", "https://api.m3ter.com", "https://api.m3ter.com/", "HTTPS://API.M3TER.COM"])
def test_m3ter_base_url_of_m3ters_api_host_or_empty_means_m3ter_itself(spelled: str) -> None:
    # Older configurations spelled m3ter out as its API host (and ``${M3TER_BASE_URL:-}`` gives
    # ""); taken literally, measurements would go to the API host instead of the ingest host.
    cfg = credentials(spelled)
    assert cfg.base_url is None
    assert cfg.measurements_url == "https://ingest.m3ter.com/organizations/o1/measurements"
    assert cfg.token_url == "https://api.m3ter.com/oauth/token"


def official_client_calls(base_url: str | None) -> list[str]:
    """The URLs the official ``m3ter`` client calls to submit one measurement with
    client credentials: its token exchange, then ``usage.submit``."""
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={**TOKEN_ANSWER, "result": "accepted"})

    client = m3ter.M3ter(
        api_key="id",
        api_secret="sec",
        org_id="o1",
        base_url=base_url,
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(answer)),
    )
    client.usage.submit(measurements=[{"uid": "1", "meter": "m", "account": "a", "ts": "2026-01-01T00:00:00.000Z"}])
    return seen


@pytest.mark.parametrize(
    "base_url",
    [
        None,  # m3ter itself
        "http://127.0.0.1:8765",  # a ledger
        "http://127.0.0.1:8765/m3ter/",  # one behind a path prefix
        "https://api.staging-org.m3ter.test",  # a staging organisation
    ],
)
def test_m3ter_calls_the_urls_the_official_client_calls(
    base_url: str | None, monkeypatch: pytest.MonkeyPatch, http: responses.RequestsMock
) -> None:
    for var in ("M3TER_BASE_URL", "M3TER_API_TOKEN"):  # the official client reads them when not given
        monkeypatch.delenv(var, raising=False)
    expected = official_client_calls(base_url)
    http.post(re.compile(r".*"), json={**TOKEN_ANSWER, "result": "accepted"})
    assert M3terExporter("m3ter", credentials(base_url)).export([m("1")]) == []
    assert [c.request.url for c in http.calls] == expected


def test_m3ter_a_second_401_with_a_fresh_token_pauses_instead_of_refreshing_forever(
    http: responses.RequestsMock,
) -> None:
    token = http.post("http://backend.test/oauth/token", json={"access_token": "t", "expires_in": 3600})
    http.post(URL, status=401)
    exporter = client_credentials_exporter()
    with pytest.raises(RetryLater, match="token refreshed"):
        exporter.export([m("1")])
    with pytest.raises(Misconfigured) as info:
        exporter.export([m("1")])
    assert info.value.status == 401 and token.call_count == 2


def test_m3ter_a_refused_client_secret_pauses(http: responses.RequestsMock) -> None:
    http.post("http://backend.test/oauth/token", status=401, json={"error": "invalid_client"})
    exporter = client_credentials_exporter()
    with pytest.raises(Misconfigured, match="token exchange") as info:
        exporter.export([m("1")])
    assert "sec" not in str(info.value) and "invalid_client" not in str(info.value)
