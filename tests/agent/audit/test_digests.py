"""Bucket digests and anchors as parts: the definition (:mod:`meterkit_agent.contentdigest`),
the agent's and the ledger's computations of it agreeing on SQLite and PostgreSQL, rows
written around the ledger, anchors that only move forward, and the head travelling on
ingest requests."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from fastapi.testclient import TestClient

from meterkit._model import content_hash, validate_wire
from meterkit_agent.contentdigest import Digest, fold
from meterkit_agent.exporters.http import HttpExporter, HttpExporterConfig
from meterkit_agent.exporters.ledger import LedgerExporter, LedgerExporterConfig
from meterkit_agent.ledger import Ledger
from meterkit_agent.ledger.api import create_app
from meterkit_agent.ledger.codec import Codec
from meterkit_agent.ledger.digests import Digests, hour_ms
from meterkit_agent.pipeline.commit import delivery_totals
from tests.agent.conftest import TOKEN
from tests.agent.exporters.helpers import FAST, URL, m

_orgs = itertools.count()
HOURS = ("2026-03-01T10:00:00Z", "2026-03-01T11:00:00Z")


def org() -> str:
    return f"digests-{next(_orgs)}-{hashlib.sha256(str(id(object())).encode()).hexdigest()[:6]}"


def records(n: int) -> list[dict[str, Any]]:
    """Two accounts over two hours, validated as the ledger stores them."""
    out = []
    for i in range(n):
        ts = f"2026-03-01T{10 + i % 2}:{i % 60:02d}:00.000Z"
        raw = {"uid": f"u-{i:05d}", "meter": "downloads", "account": f"acct-{i % 3 % 2}", "ts": ts}
        out.append(validate_wire({**raw, "measure": {"bytes": i * 10}, "who": {"user": f"p{i % 5}"}}))
    return out


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ledger, Digests]]:
    folder = tmp_path_factory.mktemp("digests")
    url = f"sqlite:///{folder / 'ledger.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    ledger = Ledger(url)
    yield ledger, Digests(ledger)
    ledger.close()


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 64, 1001])
def test_the_fast_fold_is_the_sum_of_the_hashes(n: int) -> None:
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    one_by_one = Digest()
    for h in hashes:
        one_by_one.add(h)
    assert fold(hashes) == one_by_one
    assert fold(list(reversed(hashes))) == one_by_one  # independent of order


def test_one_altered_measurement_is_named_by_arithmetic_alone() -> None:
    delivered = {f"u{i}": hashlib.sha256(f"v{i}".encode()).hexdigest() for i in range(40)}
    expected = fold(list(delivered.values()))
    held = {**delivered, "u17": hashlib.sha256(b"forged").hexdigest()}
    assert expected.altered(held) == ("u17", delivered["u17"])
    assert expected.altered({**held, "u3": hashlib.sha256(b"again").hexdigest()}) is None  # two: cannot tell
    assert expected.altered(delivered) is None
    short = dict(delivered)
    del short["u5"]
    assert expected.minus(fold(list(short.values()))).single()  # exactly one whole measurement gone
    del short["u6"]
    assert not expected.minus(fold(list(short.values()))).single()


def test_the_ledger_computes_what_the_journal_records(store: tuple[Ledger, Digests]) -> None:
    """The agent's commit step and the ledger compute the same digests, each its own way."""
    ledger, digests = store
    tenant, batch = org(), records(200)
    ledger.ingest(tenant, batch)
    journaled = {
        (t["meter"], t["account"], t["hour"]): (t["count"], t["content"], t["check"]) for t in delivery_totals(batch)
    }
    held = digests.buckets(tenant, hour_ms(HOURS[0]), hour_ms(HOURS[1]) + 3_600_000)
    assert {(b["meter"], b["account"], b["hour"]): (b["count"], b["content"], b["check"]) for b in held} == journaled
    assert len(journaled) == 4
    only = digests.buckets(tenant, hour_ms(HOURS[0]), hour_ms(HOURS[1]), account="acct-1")
    assert [(b["account"], b["hour"]) for b in only] == [("acct-1", HOURS[0])]


def test_rows_written_around_the_ledger_are_hashed_from_their_rows(store: tuple[Ledger, Digests]) -> None:
    """A row inserted by hand (the rollups know nothing of it) and a row changed by hand
    (a trigger marks its hour dirty): the bucket is recomputed from its rows."""
    ledger, digests = store
    tenant, batch = org(), records(6)
    ledger.ingest(tenant, batch)
    bucket = ("downloads", "acct-0", HOURS[0])
    hashes = dict(((u, h) for u, *_, h in digests.listing(tenant, [bucket])))
    forged = {**batch[0], "uid": "hand-1"}
    edited = {**batch[2], "measure": {"bytes": 999}}
    codec, mark = Codec(), ledger.mark
    ms, _template, nums, extra = codec.split(forged)
    conn = ledger.connection()
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT id FROM series WHERE org = {mark} AND account = 'acct-0'", (tenant,))
        series = cur.fetchone()[0]
        cur.execute(f"SELECT shape FROM measurements WHERE series = {mark} LIMIT 1", (series,))
        shape = cur.fetchone()[0]
        if ledger.postgres:
            cur.execute(
                "INSERT INTO uids (org_id, uid, series, ts_ms) VALUES ((SELECT id FROM orgs WHERE org = %s), %s, %s, %s)",
                (tenant, "hand-1", series, ms),
            )
            cur.execute(
                "INSERT INTO measurements (series, ts_ms, uid, shape, nums, extra) VALUES (%s, %s, %s, %s, %s, %s)",
                (series, ms, "hand-1", shape, nums, extra),
            )
            cur.execute("UPDATE measurements SET nums = %s WHERE uid = %s", (codec.split(edited)[2], edited["uid"]))
        else:
            cur.execute("BEGIN IMMEDIATE")
            cur.execute(
                "INSERT INTO measurements (org_id, series, ts_ms, uid, shape, nums, extra)"
                " VALUES ((SELECT id FROM orgs WHERE org = ?), ?, ?, ?, ?, ?, ?)",
                (tenant, series, ms, "hand-1", shape, nums, extra),
            )
            cur.execute("UPDATE measurements SET nums = ? WHERE uid = ?", (codec.split(edited)[2], edited["uid"]))
        conn.commit()
    finally:
        conn.close()
    now = dict(((u, h) for u, *_, h in digests.listing(tenant, [bucket])))
    assert now == {**hashes, "hand-1": content_hash(forged), batch[2]["uid"]: content_hash(edited)}
    (held,) = [b for b in digests.buckets(tenant, hour_ms(HOURS[0]), hour_ms(HOURS[1])) if b["account"] == "acct-0"]
    assert Digest.from_json(held) == fold(list(now.values()))
    found = digests.lookup(tenant, ["hand-1", "nowhere"])
    assert [(f["uid"], f["hour"], f["body"]["uid"]) for f in found["measurements"]] == [("hand-1", HOURS[0], "hand-1")]


def test_an_anchor_only_moves_forward_and_remembers_going_back(store: tuple[Ledger, Digests]) -> None:
    _, digests = store
    tenant, journal = org(), "ab" * 16
    assert digests.record_anchor(tenant, journal, f"3:{'1' * 64}")
    assert digests.record_anchor(tenant, journal, f"5:{'2' * 64}")
    assert digests.record_anchor(tenant, journal, f"5:{'2' * 64}")  # the same head again: nothing new
    ((anchor),) = digests.anchors(tenant, journal)
    assert (anchor["seq"], anchor["hash"], anchor["regressed"]) == (5, "2" * 64, "")
    assert digests.record_anchor(tenant, journal, f"4:{'3' * 64}")  # cut, then written on
    assert digests.record_anchor(tenant, journal, f"6:{'4' * 64}")
    ((anchor),) = digests.anchors(tenant, journal)
    assert anchor["seq"] == 6 and anchor["regressed"].startswith(f"head 4:{'3' * 16}... arrived at ")
    assert not digests.record_anchor(tenant, "not-a-journal", f"7:{'5' * 64}")
    assert not digests.record_anchor(tenant, journal, "7:short")
    assert digests.anchors(tenant, "cd" * 16) == []


def test_the_ingest_api_anchors_the_head_of_authorized_requests(tmp_path: Path) -> None:
    api = TestClient(create_app(Ledger(f"sqlite:///{tmp_path / 'api.db'}"), token=TOKEN))
    journal, url = "ef" * 16, "/organizations/o1/measurements"

    def post(seq: int, token: str, items: list[Any]) -> int:
        head = {"X-Meterkit-Journal": journal, "X-Meterkit-Journal-Head": f"{seq}:{'a' * 64}"}
        auth = {"Authorization": f"Bearer {token}"}
        return api.post(url, json={"measurements": items}, headers={**head, **auth}).status_code

    def anchored() -> int:
        found = api.get("/organizations/o1/anchors", headers={"Authorization": f"Bearer {TOKEN}"}).json()["anchors"]
        return int(found[0]["seq"]) if found else 0

    good = {"uid": "a1", "meter": "m", "account": "acme", "ts": "2026-03-01T10:00:00Z", "measure": {"n": 1}}
    assert post(2, TOKEN, [good]) == 200 and anchored() == 2
    assert post(3, TOKEN, [{"meter": "m"}]) == 400 and anchored() == 3  # refused as invalid: the head is still true
    assert post(9, "wrong", [good]) == 401 and anchored() == 3  # never from an unauthorized request
    assert api.get("/organizations/o1/anchors").status_code == 401
    assert (
        api.get(
            "/organizations/o1/reconcile/buckets?from=yesterday&to=2026-01-01",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ).status_code
        == 400
    )
    bad = api.post(
        "/organizations/o1/reconcile/uids", json={"buckets": "all"}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert bad.status_code == 400


def test_an_ingest_exporter_carries_the_journal_head(http: responses.RequestsMock) -> None:
    http.post(URL, json={"result": "accepted"})
    exporter = HttpExporter("http", HttpExporterConfig(url=URL, retry=FAST))
    assert exporter.export([m("u1")]) == []
    assert "X-Meterkit-Journal-Head" not in http.calls[0].request.headers  # until the pipeline sets it
    exporter.journal_head = lambda: ("12" * 16, f"7:{'b' * 64}")
    assert exporter.export([m("u2")]) == []
    sent = http.calls[1].request.headers
    assert sent["X-Meterkit-Journal"] == "12" * 16 and sent["X-Meterkit-Journal-Head"] == f"7:{'b' * 64}"


def test_the_embedded_ledger_exporter_anchors_the_journal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    exporter = LedgerExporter("ledger", LedgerExporterConfig(db=url, org_id="o2"))
    exporter.journal_head = lambda: ("34" * 16, f"4:{'c' * 64}")
    assert exporter.export([m("u1")]) == []
    exporter.shutdown()
    (anchor,) = Digests(Ledger(url)).anchors("o2")
    assert (anchor["journal"], anchor["seq"], anchor["hash"]) == ("34" * 16, 4, "c" * 64)
