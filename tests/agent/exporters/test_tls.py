"""Every exporter family takes ``tls``: it verifies the backend against the configured CA
and shows its client certificate (mutual TLS), and without that CA it does not connect.
The throwaway CA and the HTTPS server are :mod:`tests.agent.test_security_defaults`'."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import SecretStr

from meterkit_agent.component import RetryLater
from meterkit_agent.exporters.http import HttpExporter, HttpExporterConfig
from meterkit_agent.exporters.m3ter import M3terExporter, M3terExporterConfig
from meterkit_agent.exporters.openmeter import OpenMeterExporter, OpenMeterExporterConfig
from meterkit_agent.exporters.stripe import StripeExporterConfig, StripeMeterConfig, StripeMeterEventsExporter
from tests.agent import test_security_defaults
from tests.agent.exporters.helpers import FAST, event
from tests.agent.test_security_defaults import Pki, TlsServer

#: The throwaway CA and its HTTPS server, one for the module (a fixture of the security tests).
tls_server = test_security_defaults.tls_server

Make = Callable[[str, dict[str, Any]], Any]

FAMILIES: dict[str, Make] = {
    "m3ter": lambda url, tls: M3terExporter(
        "m3ter", M3terExporterConfig(base_url=url, org_id="o", token=SecretStr("t0ken"), retry=FAST, tls=tls)
    ),
    "openmeter": lambda url, tls: OpenMeterExporter(
        "openmeter", OpenMeterExporterConfig(base_url=url, token=SecretStr("t0ken"), retry=FAST, tls=tls)
    ),
    "http": lambda url, tls: HttpExporter("http", HttpExporterConfig(url=f"{url}/ingest", retry=FAST, tls=tls)),
    "stripe": lambda url, tls: StripeMeterEventsExporter(
        "stripe",
        StripeExporterConfig(
            api_key=SecretStr("sk_test_123"),
            base_url=url,
            meters={"api_calls": StripeMeterConfig(value_field="measure.calls")},
            max_requests_per_second=1000,
            retry=FAST,
            tls=tls,
        ),
    ),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_exporter_verifies_the_backend_against_its_ca_and_shows_its_certificate(
    family: str, tls_server: tuple[Pki, TlsServer]
) -> None:
    pki, server = tls_server
    make = FAMILIES[family]
    with pytest.raises(RetryLater, match="SSLError"):  # the system's CAs do not know this one
        make(server.url, {}).export([event(f"{family}-plain")])
    served = len(server.clients)
    tls = {"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key}
    assert make(server.url, tls).export([event(f"{family}-mtls")]) == []
    assert server.clients[served:] == ["meterkit-agent"]
