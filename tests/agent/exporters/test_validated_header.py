"""``Meterkit-Validated`` (contract C2): an ingest request says which rules and catalog its
measurements passed, exactly when the pipeline's last processor is the validate
processor, so that nothing after validation changed them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import responses

from meterkit._model import validation_token
from meterkit_agent.agent import Agent
from meterkit_agent.config import parse_config
from meterkit_agent.exporters.exporterhelper import VALIDATED_HEADER
from tests.agent.exporters.helpers import m

BASE = "http://backend.test"


def agent(tmp_path: Path, processors: list[str]) -> Agent:
    return Agent(
        parse_config(
            {
                "receivers": {"spool": {"directory": str(tmp_path / "spool")}},
                "processors": {"validate": {}, "enrich": {"set": {"where": {"region": "eu"}}}, "batch": {}},
                "exporters": {"m3ter": {"base_url": BASE, "org_id": "o1", "token": "t"}},
                "service": {
                    "state_dir": str(tmp_path / "state"),
                    "pipelines": {
                        "usage": {"receivers": ["spool"], "processors": [*processors, "batch"], "exporters": ["m3ter"]}
                    },
                },
            }
        )
    )


def sent_headers(http: responses.RequestsMock, a: Agent) -> Any:
    http.post(f"{BASE}/organizations/o1/measurements", json={})
    try:
        assert a.exporters[0].export([m("u1"), m("u2")]) == []
    finally:
        a.metrics.shutdown()
    return http.calls[0].request.headers


def test_sent_when_validation_comes_last(tmp_path: Path, http: responses.RequestsMock) -> None:
    headers = sent_headers(http, agent(tmp_path, ["enrich", "validate"]))
    assert headers[VALIDATED_HEADER] == validation_token(None)


def test_not_sent_when_a_processor_changes_records_after_validation(
    tmp_path: Path, http: responses.RequestsMock
) -> None:
    assert VALIDATED_HEADER not in sent_headers(http, agent(tmp_path, ["validate", "enrich"]))


def test_not_sent_without_validation(tmp_path: Path, http: responses.RequestsMock) -> None:
    assert VALIDATED_HEADER not in sent_headers(http, agent(tmp_path, ["enrich"]))
