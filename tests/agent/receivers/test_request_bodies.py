"""Whatever arrives as a body, the network receivers answer with a named 4xx or a 2xx,
never a 5xx or a crash: random bytes, random JSON, measurement-shaped JSON with random
values, random OTLP requests, gzip split into random members, in any Content-Encoding."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from meterkit import load_catalog
from meterkit._sinks import SpoolSink
from meterkit_agent.receivers.http import HttpReceiverConfig, create_receiver_app
from meterkit_agent.receivers.otlp import OtlpReceiverConfig, create_otlp_app
from tests.agent.receivers.bodies import SUPPORTED, documents, encode, encodings
from tests.conftest import CATALOG

LIMIT = 64 * 1024
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    root = tmp_path_factory.mktemp("bodies")
    catalog = load_catalog(CATALOG)
    sinks = [
        SpoolSink(
            root / name,
            name,
            max_segment_bytes=1 << 22,
            max_segment_age_seconds=60,
            max_spool_bytes=1 << 34,
            fsync=False,
        )
        for name in ("http", "otlp")
    ]
    yield {
        "/v1/measurements": TestClient(
            create_receiver_app(HttpReceiverConfig(max_request_bytes=LIMIT), sinks[0], catalog)
        ),
        "/v1/logs": TestClient(create_otlp_app(OtlpReceiverConfig(max_request_bytes=LIMIT), sinks[1], catalog)),
    }
    for sink in sinks:
        sink.close()


# -- OTLP requests: well-formed protobuf with anything in its records ----------------------------


def any_value() -> st.SearchStrategy[AnyValue]:
    scalars = st.one_of(
        st.builds(lambda v: AnyValue(string_value=v), st.text(max_size=20)),
        st.builds(lambda v: AnyValue(int_value=v), st.integers(-(2**63), 2**63 - 1)),
        st.builds(lambda v: AnyValue(double_value=v), st.floats()),
        st.builds(lambda v: AnyValue(bool_value=v), st.booleans()),
        st.builds(lambda v: AnyValue(bytes_value=v), st.binary(max_size=10)),
    )
    return scalars | st.builds(lambda vs: AnyValue(array_value=ArrayValue(values=vs)), st.lists(scalars, max_size=3))


keys = st.sampled_from(
    [
        "meterkit.meter",
        "meterkit.account",
        "meterkit.uid",
        "meterkit.measure.bytes",
        "meterkit.measure.",
        "meterkit.who.user",
        "meterkit.where.region",
        "meterkit.nope.x",
        "meterkit.",
        "service.name",
    ]
)
attributes = st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v), keys, any_value()), max_size=6)
times = st.sampled_from([0, 1, 1767225600000000000, 2**63, 2**64 - 1])
records = st.builds(
    lambda a, t, o, body: LogRecord(time_unix_nano=t, observed_time_unix_nano=o, attributes=a, body=body),
    attributes,
    times,
    times,
    any_value(),
)
otlp_requests = st.builds(
    lambda groups: ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(resource=Resource(attributes=res), scope_logs=[ScopeLogs(log_records=recs)])
            for res, recs in groups
        ]
    ),
    st.lists(st.tuples(attributes, st.lists(records, max_size=4)), max_size=3),
)


def check(r: Any, path: str, encoding: str | None) -> None:
    """A 2xx, or a bounded 4xx that says why; never a 5xx."""
    assert r.status_code in (200, 400, 413, 415), (r.status_code, r.text[:200])
    assert (r.status_code == 415) == (encoding not in SUPPORTED)
    if r.status_code != 200:
        message = r.json()["message"] if path == "/v1/measurements" else r.text
        assert message and len(message) < 10_000


def post(client: TestClient, path: str, body: bytes, content_type: str, encoding: str | None) -> Any:
    headers = {"Content-Type": content_type}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return client.post(path, content=body, headers=headers)


# -- the properties ----------------------------------------------------------------------------

paths = st.sampled_from(["/v1/measurements", "/v1/logs"])
content_types = st.sampled_from(["application/json", "application/x-ndjson", "application/x-protobuf", ""])
cut_points = st.lists(st.integers(min_value=0), max_size=4)


@FUZZ
@given(path=paths, body=st.binary(max_size=2000), content_type=content_types, encoding=encodings)
def test_random_bytes(
    clients: dict[str, TestClient], path: str, body: bytes, content_type: str, encoding: str | None
) -> None:
    check(post(clients[path], path, body, content_type, encoding), path, encoding)


@FUZZ
@given(path=paths, doc=documents, content_type=content_types, encoding=encodings, cuts=cut_points)
def test_random_json_in_any_coding(
    clients: dict[str, TestClient], path: str, doc: Any, content_type: str, encoding: str | None, cuts: list[int]
) -> None:
    payload = json.dumps(doc).encode()  # stdlib json: NaN, Infinity and 100-digit integers reach the server too
    check(post(clients[path], path, encode(payload, encoding, cuts), content_type, encoding), path, encoding)


@FUZZ
@given(req=otlp_requests, as_json=st.booleans(), encoding=encodings, cuts=cut_points)
def test_random_otlp_requests_are_answered_with_partial_success(
    clients: dict[str, TestClient], req: ExportLogsServiceRequest, as_json: bool, encoding: str | None, cuts: list[int]
) -> None:
    payload = json_format.MessageToJson(req).encode() if as_json else req.SerializeToString()
    content_type = "application/json" if as_json else "application/x-protobuf"
    r = post(clients["/v1/logs"], "/v1/logs", encode(payload, encoding, cuts), content_type, encoding)
    check(r, "/v1/logs", encoding)
    if encoding in SUPPORTED and len(payload) <= LIMIT:
        assert r.status_code == 200  # a well-formed request is answered, every record accounted for
        answer = ExportLogsServiceResponse()
        if as_json:
            json_format.Parse(r.text, answer)
        else:
            answer.ParseFromString(r.content)
        total = sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)
        rejected = answer.partial_success.rejected_log_records
        assert 0 <= rejected <= total and bool(answer.partial_success.error_message) == (rejected > 0)


@FUZZ
@given(path=paths, encoding=st.sampled_from(["gzip", "deflate"]), size=st.integers(LIMIT + 1, 50 * LIMIT))
def test_bodies_that_decompress_past_the_limit_are_a_413(
    clients: dict[str, TestClient], path: str, encoding: str, size: int
) -> None:
    r = post(
        clients[path], path, encode(b"[" + b" " * size + b"]", encoding, [size // 2]), "application/json", encoding
    )
    assert r.status_code == 413


def test_every_gzip_member_is_read_and_bytes_after_the_last_are_refused(clients: dict[str, TestClient]) -> None:
    one = {"uid": "m1", "meter": "logins", "account": "acme", "ts": "2026-01-01T00:00:00Z", "measure": {"logins": 1}}
    two = {**one, "uid": "m2"}
    body = gzip.compress(b'{"measurements": [' + json.dumps(one).encode() + b", ") + gzip.compress(
        json.dumps(two).encode() + b"]}"
    )
    r = post(clients["/v1/measurements"], "/v1/measurements", body, "application/json", "gzip")
    assert r.status_code == 200 and r.json() == {"accepted": 2}  # the second member is half the document
    r = post(clients["/v1/measurements"], "/v1/measurements", body + b"junk", "application/json", "gzip")
    assert r.status_code == 400 and "member 3" in r.json()["message"]
