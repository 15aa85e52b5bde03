"""The ledger reads bodies as the receivers do (``httpserver.read_body``): whatever arrives
at its ingest or token endpoint is answered with a 2xx or a named, bounded 4xx, never a 5xx;
its 512,000-byte limit holds decompressed; an unknown Content-Encoding is a 415."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterkit_agent.ledger import Ledger
from meterkit_agent.ledger.api import MAX_REQUEST_BYTES, create_app
from tests.agent.conftest import TOKEN
from tests.agent.receivers.bodies import SUPPORTED, documents, encode, encodings

AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASIC = {"Authorization": "Basic c3ZjOlM="}  # svc:S
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
cut_points = st.lists(st.integers(min_value=0), max_size=4)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    db = tmp_path_factory.mktemp("ledger") / "fuzz.db"
    return TestClient(create_app(Ledger(f"sqlite:///{db}"), token=TOKEN, client_credentials=("svc", "S")))


def send(api: TestClient, path: str, body: bytes, encoding: str | None, auth: dict[str, str]) -> Any:
    headers = {**auth, "Content-Type": "application/json"}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return api.post(path, content=body, headers=headers)


def check(r: Any, encoding: str | None) -> None:
    """A 2xx, or a bounded 4xx whose JSON says why; never a 5xx."""
    assert r.status_code in (200, 400, 413, 415), (r.status_code, r.text[:200])
    assert (r.status_code == 415) == (encoding not in SUPPORTED)
    if r.status_code == 415:
        assert r.headers["accept-encoding"] == "gzip, deflate, identity"
    if r.status_code != 200:
        assert 0 < len(r.json()["message"]) < 10_000


@FUZZ
@given(body=st.binary(max_size=2000), encoding=encodings)
def test_random_bytes_to_ingest(api: TestClient, body: bytes, encoding: str | None) -> None:
    check(send(api, "/organizations/o/measurements", body, encoding, AUTH), encoding)


@FUZZ
@given(doc=documents, encoding=encodings, cuts=cut_points)
def test_random_json_to_ingest_in_any_coding(api: TestClient, doc: Any, encoding: str | None, cuts: list[int]) -> None:
    body = encode(json.dumps(doc).encode(), encoding, cuts)
    check(send(api, "/organizations/o/measurements", body, encoding, AUTH), encoding)


@FUZZ
@given(body=st.binary(max_size=2000) | documents.map(lambda d: json.dumps(d).encode()), encoding=encodings)
def test_random_bodies_to_the_token_exchange(api: TestClient, body: bytes, encoding: str | None) -> None:
    check(send(api, "/oauth/token", body, encoding, BASIC), encoding)


def test_the_limit_holds_decompressed_and_across_gzip_members(api: TestClient) -> None:
    half = b" " * (MAX_REQUEST_BYTES // 2 + 1)
    body = gzip.compress(b'{"measurements": [' + half) + gzip.compress(half + b"]}")
    assert len(body) < 2_000  # two small members, over the limit only together
    r = send(api, "/organizations/o/measurements", body, "gzip", AUTH)
    assert r.status_code == 413 and "at most 512000" in r.json()["message"]
    fits = gzip.compress(b'{"measurements": [') + gzip.compress(b"]}")
    assert send(api, "/organizations/o/measurements", fits, "gzip", AUTH).json()["accepted"] == 0


def test_the_token_exchange_reads_a_bounded_body(api: TestClient) -> None:
    r = send(api, "/oauth/token", b'{"grant_type": "client_credentials", "pad": "' + b"x" * 20_000 + b'"}', None, BASIC)
    assert r.status_code == 413
    assert send(api, "/oauth/token", b'{"grant_type": "client_credentials"}', None, BASIC).status_code == 200
