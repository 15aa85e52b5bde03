"""The delivery rules as pure functions, and how an ingest exporter retries and isolates bad
records (request shapes with ``responses``)."""

from __future__ import annotations

import gzip
import json
from typing import Any

import orjson
import pytest
import responses
from pydantic import SecretStr

from meterkit_agent.component import Misconfigured, RetryLater
from meterkit_agent.exporters.exporterhelper import chunks, classify, idempotency_key, parse_retry_after, request_body
from meterkit_agent.exporters.http import HttpExporter, HttpExporterConfig
from tests.agent.exporters.helpers import FAST, URL, body_of, m


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "ok"),
        (202, "ok"),
        (204, "ok"),
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (502, "retry"),
        (503, "retry"),
        (504, "retry"),
        (400, "isolate"),
        (401, "pause"),  # wrong credentials, wrong URL: the configuration, never the data
        (403, "pause"),
        (404, "pause"),
        (409, "isolate"),
        (413, "isolate"),
        (422, "isolate"),
        (302, "retry"),
    ],
)
def test_retry_predicate(status: int, outcome: str) -> None:
    assert classify(status) == outcome


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("", None), ("7", 7.0), ("100000", 300.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("soon", None)],
)
def test_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=1_700_000_000) == expected


def test_retry_after_http_date_in_the_future() -> None:
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now=1_700_000_000) == 20.0


def test_idempotency_key_is_stable_and_order_free() -> None:
    assert idempotency_key(["b", "a", "c"]) == idempotency_key(["c", "b", "a"])
    assert idempotency_key(["a", "b"]) != idempotency_key(["a", "b", "c"])
    assert len(idempotency_key(["a"])) == 48


def test_chunks_respect_count_and_bytes() -> None:
    records = [{"uid": str(i), "metadata": {"pad": "x" * 200}} for i in range(2500)]
    out = list(chunks(records, 1000, 100_000))
    assert sum(len(c) for c in out) == 2500
    assert all(len(c) <= 1000 and len(request_body(c)) <= 100_000 for c in out)
    assert orjson.loads(request_body(out[0])) == {"measurements": [r for r, _ in out[0]]}


@responses.activate
def test_transient_answers_raise_retry_later_with_retry_after() -> None:
    responses.post(URL, status=429, headers={"Retry-After": "3"})
    exporter = HttpExporter("http", HttpExporterConfig(url=URL, retry=FAST))
    with pytest.raises(RetryLater) as info:
        exporter.export([m("1")])
    assert info.value.retry_after == 3.0


@responses.activate
def test_bad_records_named_by_the_backend_are_isolated() -> None:
    responses.post(URL, status=400, json={"errors": [{"index": 1, "reason": "wrong_type"}]})
    responses.post(URL, json={"result": "accepted"})
    exporter = HttpExporter("http", HttpExporterConfig(url=URL, headers={"X-Api-Key": SecretStr("k")}, retry=FAST))
    rejected = exporter.export([m("1"), m("2"), m("3")])
    assert [(r.measurement["uid"], r.reason) for r in rejected] == [("2", "rejected_by_backend:wrong_type")]
    assert [x["uid"] for x in body_of(responses.calls[1])["measurements"]] == ["1", "3"]
    assert responses.calls[0].request.headers["X-Api-Key"] == "k"


@responses.activate
def test_unnamed_bad_records_are_isolated_by_splitting() -> None:
    def callback(request: Any) -> tuple[int, dict[str, str], str]:
        uids = [x["uid"] for x in json.loads(gzip.decompress(request.body))["measurements"]]
        return (422, {}, "bad record in here") if "3" in uids else (200, {}, "{}")

    responses.add_callback(responses.POST, URL, callback=callback)
    exporter = HttpExporter("http", HttpExporterConfig(url=URL, retry=FAST))
    rejected = exporter.export([m(str(i)) for i in range(8)])
    assert [r.measurement["uid"] for r in rejected] == ["3"]
    assert rejected[0].detail == "HTTP 422: bad record in here"
    delivered = [x["uid"] for c in responses.calls if c.response.status_code == 200 for x in body_of(c)["measurements"]]
    assert sorted(delivered) == [str(i) for i in range(8) if i != 3]


@responses.activate
@pytest.mark.parametrize("status", [401, 403, 404])
def test_wrong_url_or_credentials_pause_and_dead_letter_nothing(status: int) -> None:
    responses.post(URL, status=status, json={"message": "no"})
    exporter = HttpExporter("http", HttpExporterConfig(url=URL, retry=FAST))
    with pytest.raises(Misconfigured) as info:
        exporter.export([m("1"), m("2")])
    assert info.value.status == status and isinstance(info.value, RetryLater)
    assert "http" in str(info.value) and URL in str(info.value)
    assert len(responses.calls) == 1  # no splitting of the batch to find a "bad" record
