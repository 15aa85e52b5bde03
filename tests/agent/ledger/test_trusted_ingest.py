"""Trusted ingest (issue 11, contract C2): a request from an authenticated sender whose
``Meterkit-Validated`` header names the ledger's own rules and catalog is not validated
again; anything else is. Either way a trusted request stores exactly what an untrusted one
would, and no body, however malformed, gets more than a named 4xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

import meterkit
from meterkit._model import validate_wire, validation_token
from meterkit_agent import httpserver
from meterkit_agent.httpserver import canonical
from meterkit_agent.ledger import Ledger
from meterkit_agent.ledger.api import VALIDATED_HEADER, create_app
from tests.agent.conftest import TOKEN, start_ledger
from tests.agent.ledger.conftest import fresh_org
from tests.conftest import CATALOG

AUTH = {"Authorization": f"Bearer {TOKEN}"}
TRUST = validation_token(meterkit.load_catalog(CATALOG))
TRUSTED = {**AUTH, VALIDATED_HEADER: TRUST}


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    store = Ledger(f"sqlite:///{tmp_path_factory.mktemp('trusted') / 'ledger.db'}")
    yield store
    store.close()


@pytest.fixture(scope="module")
def api(ledger: Ledger) -> TestClient:
    catalog = meterkit.load_catalog(CATALOG)
    app = create_app(ledger, token=TOKEN, catalog=catalog, client_credentials=("svc", "S"))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every measurement the API validates (a spy: each call still validates)."""
    seen: list[Any] = []

    def spy(raw: Any, *args: Any) -> dict[str, Any]:
        seen.append(raw)
        return validate_wire(raw, *args)

    monkeypatch.setattr(httpserver, "validate_wire", spy)
    return seen


def downloads(n: int, tag: str) -> list[dict[str, Any]]:
    """Measurements exactly as the agent's validate processor leaves them."""
    return [
        {
            "uid": f"{tag}-{i}",
            "meter": "data_downloaded",
            "account": f"acct {i % 3}",  # a space inside is fine; at either end it is not
            "ts": f"2026-11-01T{i % 24:02d}:{i % 60:02d}:00.{i % 1000:03d}Z",
            "who": {"user": f"u{i % 5}"},
            "where": {"region": "eu-west-1"},
            "measure": {"bytes": i * 1024 + 1, "mib": round(i / 1024, 3)},
        }
        for i in range(n)
    ]


def post(api: TestClient, org: str, items: list[Any], headers: dict[str, str]) -> Any:
    return api.post(f"/organizations/{org}/measurements", content=json.dumps({"measurements": items}), headers=headers)


def test_a_trusted_request_is_not_validated_again(api: TestClient, ledger: Ledger, validations: list[Any]) -> None:
    batch = downloads(200, "t")
    assert all(validate_wire(m, meterkit.load_catalog(CATALOG)) == m for m in batch)  # truly what validation gives
    validations.clear()
    org = fresh_org()
    r = post(api, org, batch, TRUSTED)
    assert r.status_code == 200 and r.json()["accepted"] == 200
    assert validations == []
    assert ledger.count(org) == 200

    untrusted = fresh_org()
    assert post(api, untrusted, batch, AUTH).status_code == 200
    assert len(validations) == 200
    for m in batch[::37]:  # the same content either way
        assert ledger.get(org, m["uid"]) == ledger.get(untrusted, m["uid"]) == m


def test_a_token_from_the_oauth_exchange_is_trusted_too(api: TestClient, validations: list[Any]) -> None:
    grant = api.post("/oauth/token", headers={"Authorization": "Basic c3ZjOlM="}, json={}).json()  # svc:S
    headers = {"Authorization": f"Bearer {grant['access_token']}", VALIDATED_HEADER: TRUST}
    assert post(api, fresh_org(), downloads(10, "o"), headers).status_code == 200
    assert validations == []


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(AUTH, id="no header"),
        pytest.param({**AUTH, VALIDATED_HEADER: validation_token(None)}, id="validated without a catalog"),
        pytest.param({**AUTH, VALIDATED_HEADER: TRUST.replace("rules", "rules9")}, id="other rules"),
        pytest.param({**AUTH, VALIDATED_HEADER: ""}, id="empty header"),
    ],
)
def test_anything_but_the_ledgers_own_rules_and_catalog_is_validated(
    api: TestClient, validations: list[Any], headers: dict[str, str]
) -> None:
    batch = downloads(5, "v")
    assert post(api, fresh_org(), batch, headers).status_code == 200
    assert len(validations) == 5
    unknown = {**batch[0], "uid": "v-x", "meter": "not_in_the_catalog"}
    r = post(api, fresh_org(), [*batch, unknown], headers)
    assert r.status_code == 400
    [error] = r.json()["errors"]
    assert error["index"] == 5 and error["reason"] == "unknown_meter"


def test_what_trust_skips_is_the_catalog(api: TestClient) -> None:
    """The observable difference: a well-formed measurement the catalog refuses is taken
    from a trusted sender (it vouched for it), and refused from anyone else."""
    unknown = {**downloads(1, "c")[0], "meter": "not_in_the_catalog"}
    assert post(api, fresh_org(), [unknown], AUTH).status_code == 400
    assert post(api, fresh_org(), [unknown], TRUSTED).status_code == 200


def test_without_authentication_nothing_is_trusted(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'open.db'}")
    try:
        api = TestClient(create_app(ledger, catalog=meterkit.load_catalog(CATALOG)))
        unknown = {**downloads(1, "n")[0], "meter": "not_in_the_catalog"}
        r = post(api, "o", [unknown], {VALIDATED_HEADER: TRUST})
        assert r.status_code == 400 and r.json()["errors"][0]["reason"] == "unknown_meter"
    finally:
        ledger.close()


def test_a_trusted_request_out_of_shape_is_validated_and_stored_as_validation_leaves_it(
    api: TestClient, ledger: Ledger, validations: list[Any]
) -> None:
    """One measurement not in the exact shape validation gives (an offset in its ts, an
    empty category, a null value) and the whole request is validated: what is stored is
    the same as from an untrusted sender."""
    batch = downloads(4, "s")
    batch[1] = {**batch[1], "ts": "2026-11-01T10:00:00.5+01:00", "what": {}, "who": {"user": None}}
    trusted, untrusted = fresh_org(), fresh_org()
    assert post(api, trusted, batch, TRUSTED).status_code == 200
    assert len(validations) == 4
    assert post(api, untrusted, batch, AUTH).status_code == 200
    stored = ledger.get(trusted, "s-1")
    assert stored == ledger.get(untrusted, "s-1")
    assert stored is not None and stored["ts"] == "2026-11-01T09:00:00.500Z" and "what" not in stored
    assert "who" not in stored


good = downloads(1, "m")[0]
MALFORMED: dict[str, Any] = {
    "not JSON": b"{measurements",
    "a list": b"[]",
    "measurements not a list": {"measurements": {"0": good}},
    "an item not an object": {"measurements": [good, 7]},
    "no uid": {"measurements": [{k: v for k, v in good.items() if k != "uid"}]},
    "uid a number": {"measurements": [{**good, "uid": 7}]},
    "empty uid": {"measurements": [{**good, "uid": ""}]},
    "uid with a NUL": {"measurements": [{**good, "uid": "a\u0000b"}]},
    "uid too long": {"measurements": [{**good, "uid": "u" * 101}]},
    "account with a space at its end": {"measurements": [{**good, "account": "acme "}]},
    "account an object": {"measurements": [{**good, "account": {"a": 1}}]},
    "meter a list": {"measurements": [{**good, "meter": ["data_downloaded"]}]},
    "ts a number": {"measurements": [{**good, "ts": 1700000000}]},
    "ts not a time": {"measurements": [{**good, "ts": "yesterday"}]},
    "ts in the wire spelling, not a date": {"measurements": [{**good, "ts": "2026-02-30T00:00:00.000Z"}]},
    "ts before 2000": {"measurements": [{**good, "ts": "1999-12-31T23:59:59.999Z"}]},
    "a number as text": {"measurements": [{**good, "measure": {"bytes": "12"}}]},
    "a boolean number": {"measurements": [{**good, "measure": {"bytes": True}}]},
    "a number past 64 bits": {"measurements": [{**good, "measure": {"bytes": 2**63}}]},
    "a category not an object": {"measurements": [{**good, "who": ["u1"]}]},
    "a fraction in a text field": {"measurements": [{**good, "who": {"user": 5.5}}]},
    "text with a control character": {"measurements": [{**good, "who": {"user": "a\u0007"}}]},
    "a bad field code": {"measurements": [{**good, "who": {"user name": "x"}}]},
    "an unknown key": {"measurements": [{**good, "extra": 1}]},
    "sixteen fields": {"measurements": [{**good, "measure": {f"f{i}": i for i in range(16)}}]},
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("headers", [AUTH, TRUSTED], ids=["untrusted", "trusted"])
def test_a_malformed_body_is_a_named_400_on_either_path(
    api: TestClient, ledger: Ledger, body: Any, headers: dict[str, str]
) -> None:
    org = fresh_org()
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = api.post(f"/organizations/{org}/measurements", content=data, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["message"]
    assert ledger.count(org) == 0


# -- canonical(): the trusted path's check, against validation itself -----------------------

anything = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from(["user", "n", "9x", "a b"]), inner),
    max_leaves=4,
)
exact_numbers = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
FIELDS = {
    "who": st.sampled_from(["u1", "", "é", "a b"]),
    "where": st.sampled_from(["eu-west-1", "x" * 500]),
    "metadata": st.sampled_from(["note", "x" * 256]),
    "measure": exact_numbers,
}


@st.composite
def measurement(draw: st.DrawFn) -> dict[str, Any]:
    """A measurement in the exact shape validation gives, with (two times in three) one
    key set to anything at all."""
    m: dict[str, Any] = {
        "uid": draw(st.sampled_from(["u-1", "u 2", "é3", "x" * 100])),
        "meter": draw(st.sampled_from(["data_downloaded", "m.x:y"])),
        "account": draw(st.sampled_from(["acme", "a b", "ü"])),
        # the wire spelling: a time, one in the future, one that is no date
        "ts": draw(
            st.sampled_from(["2026-11-01T10:00:00.000Z", "2099-12-31T23:59:59.999Z", "2026-02-30T00:00:00.000Z"])
        ),
    }
    for category in sorted(draw(st.sets(st.sampled_from(sorted(FIELDS))))):
        codes = st.sampled_from(["bytes", "user", "region", "n"])
        m[category] = draw(st.dictionaries(codes, FIELDS[category], min_size=1, max_size=3))
    if draw(st.booleans()):
        m["ets"] = draw(st.sampled_from(["2026-11-01T11:00:00.000Z", "2026-11-01T09:00:00.000Z"]))
    if draw(st.integers(0, 2)):
        m[draw(st.sampled_from(["uid", "meter", "account", "ts", "ets", "who", "measure", "metadata", "bogus"]))] = (
            draw(anything)
        )
    return m


#: why validation may refuse what canonical() passes: the checks trust leaves to the sender
SENDERS_WORD = {"bad_timestamp", "ts_in_future", "ts_out_of_range"}


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(measurement(), min_size=1, max_size=3))
def test_canonical_means_validation_would_change_nothing(batch: list[dict[str, Any]]) -> None:
    if not canonical(batch):
        return
    for m in batch:
        try:
            validated, refused = validate_wire(m), None
        except meterkit.MeasurementError as exc:
            validated, refused = None, exc.problem.reason
        assert validated == m or refused in SENDERS_WORD, (m, refused)


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(measurement(), min_size=1, max_size=3), trusted=st.booleans())
def test_no_measurement_gets_more_than_a_400(api: TestClient, batch: list[dict[str, Any]], trusted: bool) -> None:
    r = post(api, fresh_org(), batch, TRUSTED if trusted else AUTH)
    assert r.status_code in (200, 400), r.text


def test_a_real_ledger_process_trusts_an_authenticated_agent(tmp_path: Path) -> None:
    """``meterkit ledger serve`` over real HTTP: the header works there as in-process."""
    server = start_ledger(tmp_path, extra=("--catalog", str(CATALOG)))
    try:
        unknown = {**downloads(1, "p")[0], "meter": "not_in_the_catalog"}
        body = json.dumps({"measurements": [unknown]})
        url = f"{server.url}/organizations/p/measurements"
        assert requests.post(url, data=body, headers=AUTH, timeout=30).status_code == 400
        assert requests.post(url, data=body, headers={VALIDATED_HEADER: TRUST}, timeout=30).status_code == 401
        assert requests.post(url, data=body, headers=TRUSTED, timeout=30).status_code == 200
    finally:
        server.proc.kill()
