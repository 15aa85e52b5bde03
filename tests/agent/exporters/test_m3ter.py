"""The m3ter exporter's request shape and client-credentials exchange (``responses``)."""

from __future__ import annotations

import pytest
import responses
from pydantic import SecretStr

from meterkit_agent.component import RetryLater
from meterkit_agent.exporters.exporterhelper import idempotency_key
from meterkit_agent.exporters.m3ter import M3terExporter, M3terExporterConfig
from tests.agent.exporters.helpers import FAST, URL, body_of, m


@responses.activate
def test_m3ter_request_shape_with_bearer_token() -> None:
    responses.post(URL, json={"result": "accepted"})
    exporter = M3terExporter(
        "m3ter", M3terExporterConfig(base_url="http://backend.test", org_id="o1", token=SecretStr("t0k"), retry=FAST)
    )
    assert exporter.export([m("1"), m("2")]) == []
    call = responses.calls[0]
    assert call.request.headers["Authorization"] == "Bearer t0k"
    assert call.request.headers["Content-Encoding"] == "gzip"
    assert call.request.headers["Idempotency-Key"] == idempotency_key(["1", "2"])
    assert body_of(call) == {"measurements": [m("1"), m("2")]}


@responses.activate
def test_m3ter_client_credentials_exchange_and_refresh_on_401() -> None:
    token = responses.post("http://backend.test/oauth/token", json={"access_token": "first", "expires_in": 3600})
    responses.post(URL, status=401)
    responses.post(URL, json={"result": "accepted"})
    exporter = M3terExporter(
        "m3ter",
        M3terExporterConfig(
            base_url="http://backend.test", org_id="o1", client_id="id", client_secret=SecretStr("sec"), retry=FAST
        ),
    )
    with pytest.raises(RetryLater, match="token refreshed"):
        exporter.export([m("1")])
    assert exporter.export([m("1")]) == []
    assert token.call_count == 2  # refreshed after the 401
    assert responses.calls[0].request.headers["Authorization"].startswith("Basic ")
    keys = {c.request.headers.get("Idempotency-Key") for c in responses.calls if c.request.url == URL}
    assert keys == {idempotency_key(["1"])}  # the retry carries the same key
