"""The delivery rules as pure functions, and how an ingest exporter retries and isolates bad
records (request shapes with ``responses``)."""

from __future__ import annotations

import gzip
import json
import threading
from typing import Any

import orjson
import pytest
import responses
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from meterkit_agent.component import Misconfigured, RetryLater
from meterkit_agent.exporters.exporterhelper import (
    Encoded,
    Encoding,
    IngestExporter,
    Serialised,
    chunks,
    classify,
    idempotency_key,
    parse_retry_after,
    request_body,
)
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
        (301, "pause"),  # the URL moved: never followed blindly (a POST would become a GET)
        (302, "pause"),
        (308, "pause"),
        (101, "retry"),
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


def test_transient_answers_raise_retry_later_with_retry_after(http: responses.RequestsMock) -> None:
    http.post(URL, status=429, headers={"Retry-After": "3"})
    exporter = HttpExporter("http", HttpExporterConfig(url=URL, retry=FAST))
    with pytest.raises(RetryLater) as info:
        exporter.export([m("1")])
    assert info.value.retry_after == 3.0


def test_bad_records_named_by_the_backend_are_isolated(http: responses.RequestsMock) -> None:
    http.post(URL, status=400, json={"errors": [{"index": 1, "reason": "wrong_type"}]})
    http.post(URL, json={"result": "accepted"})
    exporter = HttpExporter("http", HttpExporterConfig(url=URL, headers={"X-Api-Key": SecretStr("k")}, retry=FAST))
    rejected = exporter.export([m("1"), m("2"), m("3")])
    assert [(r.measurement["uid"], r.reason) for r in rejected] == [("2", "rejected_by_backend:wrong_type")]
    assert [x["uid"] for x in body_of(http.calls[1])["measurements"]] == ["1", "3"]
    assert http.calls[0].request.headers["X-Api-Key"] == "k"


def test_unnamed_bad_records_are_isolated_by_splitting(http: responses.RequestsMock) -> None:
    def callback(request: Any) -> tuple[int, dict[str, str], str]:
        uids = [x["uid"] for x in json.loads(gzip.decompress(request.body))["measurements"]]
        return (422, {}, "bad record in here") if "3" in uids else (200, {}, "{}")

    http.add_callback(responses.POST, URL, callback=callback)
    exporter = HttpExporter("http", HttpExporterConfig(url=URL, retry=FAST))
    rejected = exporter.export([m(str(i)) for i in range(8)])
    assert [r.measurement["uid"] for r in rejected] == ["3"]
    assert rejected[0].detail == "HTTP 422: bad record in here"
    delivered = [x["uid"] for c in http.calls if c.response.status_code == 200 for x in body_of(c)["measurements"]]
    assert sorted(delivered) == [str(i) for i in range(8) if i != 3]


@pytest.mark.parametrize("status", [401, 403, 404])
def test_wrong_url_or_credentials_pause_and_dead_letter_nothing(status: int, http: responses.RequestsMock) -> None:
    http.post(URL, status=status, json={"message": "no"})
    exporter = HttpExporter("http", HttpExporterConfig(url=URL, retry=FAST))
    with pytest.raises(Misconfigured) as info:
        exporter.export([m("1"), m("2")])
    assert info.value.status == status and isinstance(info.value, RetryLater)
    assert "http" in str(info.value) and URL in str(info.value)
    assert len(http.calls) == 1  # no splitting of the batch to find a "bad" record


def _greedy_chunks(records: list[dict[str, Any]], max_count: int, max_bytes: int) -> list[list[Encoded]]:
    """The rule, record by record: a request takes the next record unless it is full."""
    out: list[list[Encoded]] = []
    current: list[Encoded] = []
    size = len(b'{"measurements":[]}')
    for record in records:
        data = orjson.dumps(record)
        if current and (len(current) >= max_count or size + len(data) + 1 > max_bytes):
            out.append(current)
            current, size = [], len(b'{"measurements":[]}')
        current.append((record, data))
        size += len(data) + 1
    return [*out, current] if current else out


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=60), max_size=40),
    max_count=st.integers(min_value=1, max_value=8),
    max_bytes=st.integers(min_value=1, max_value=400),
    serialised=st.booleans(),
)
def test_chunks_cut_where_the_record_by_record_rule_cuts(
    sizes: list[int], max_count: int, max_bytes: int, serialised: bool
) -> None:
    records = [{"uid": str(i), "pad": "x" * n} for i, n in enumerate(sizes)]
    given_records = Serialised(records, [orjson.dumps(r) for r in records]) if serialised else records
    assert list(chunks(given_records, max_count, max_bytes)) == _greedy_chunks(records, max_count, max_bytes)


def test_destinations_handed_one_batch_share_its_request_bodies(
    monkeypatch: pytest.MonkeyPatch, http: responses.RequestsMock
) -> None:
    """Exporters of one kind and the same limits build a serialised batch's requests once,
    whichever asks first, also when they ask at the same moment; other limits, another
    kind (its own body) or a plain list get requests of their own."""
    http.post(URL, json={})
    made: list[int] = []
    encode = IngestExporter.encode

    def counting(self: IngestExporter, chunk: list[Encoded]) -> Encoding:
        made.append(len(chunk))
        return encode(self, chunk)

    monkeypatch.setattr(IngestExporter, "encode", counting)
    records = [m(str(i)) for i in range(5)]
    batch = Serialised(records, [orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records])
    exporters = [HttpExporter(f"http/{i}", HttpExporterConfig(url=URL, retry=FAST)) for i in range(3)]
    for e in exporters:
        e.max_count = 2
    start = threading.Barrier(3)

    def send(e: HttpExporter) -> None:
        start.wait()
        assert e.export(batch) == []

    threads = [threading.Thread(target=send, args=(e,)) for e in exporters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert made == [2, 2, 1]  # three requests' bodies, made once for three exporters
    assert len(http.calls) == 9 and len({id(c.request.body) for c in http.calls}) == 3  # the same bytes
    sent = sorted(r["uid"] for c in http.calls for r in body_of(c)["measurements"])
    assert sent == sorted([str(i) for i in range(5)] * 3)

    other = HttpExporter("http/other", HttpExporterConfig(url=URL, retry=FAST))  # max_count 1000: one request
    assert other.export(batch) == [] and made == [2, 2, 1, 5]
    assert exporters[0].export(list(records)) == [] and made == [2, 2, 1, 5, 2, 2, 1]
