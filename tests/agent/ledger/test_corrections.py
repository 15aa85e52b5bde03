"""Corrections at the ledger, on SQLite and PostgreSQL: a stored reversal voids what it
reverses for every usage answer (rollups, hour edges, groupBy), in any order; a
replacement counts; lineage and backfill batches are listed; reconciliation's digests
still cover every stored row; a reversal that does not match what it reverses is refused
by itself."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi.testclient import TestClient

from meterkit._corrections import replacement, reversal, reversal_uid
from meterkit._model import content_hash
from meterkit_agent.contentdigest import Digest
from meterkit_agent.instants import parse_instant
from meterkit_agent.ledger import Ingested, Ledger, UsageQuery
from meterkit_agent.ledger.digests import Digests
from tests.agent.conftest import TOKEN, start_ledger, wait_for
from tests.agent.ledger.conftest import AUTH, fresh_org, measurement


def uid() -> str:
    return str(uuid.uuid4())  # a lowercase UUID: SQLite keeps it as 16 bytes


def m(ts: str, bytes_: int | float, user: str, region: str = "eu", account: str = "acme") -> dict[str, Any]:
    return measurement(uid(), ts, account, measure={"bytes": bytes_}, who={"user": user}, where={"region": region})


U1 = m("2026-01-01T10:15:00.000Z", 100, "ann")
U2 = m("2026-01-01T10:45:00.000Z", 300, "bob", "us")  # the hour's largest, latest, only "bob" and "us"
U3 = m("2026-01-01T11:05:00.000Z", 50, "ann")
U4 = m("2026-01-01T10:50:00.000Z", 2.5, "cy", account="globex")
KEPT = [U1, U3, U4]

QUERIES = [
    {"aggregation": "SUM", "target": "bytes"},
    {"aggregation": "MEAN", "target": "bytes"},
    {"aggregation": "MIN", "target": "bytes"},
    {"aggregation": "MAX", "target": "bytes"},
    {"aggregation": "LATEST", "target": "bytes"},
    {"aggregation": "LATEST", "target": "user"},
    {"aggregation": "COUNT"},
    {"aggregation": "COUNT", "target": "user"},
    {"aggregation": "UNIQUE", "target": "user"},
    {"aggregation": "UNIQUE", "target": "region"},
]
PERIODS = [
    {},
    {"start": "2026-01-01T10:00:00Z", "end": "2026-01-01T12:00:00Z"},
    {"start": "2026-01-01T10:30:00Z", "end": "2026-01-01T12:00:00Z"},  # starts mid-hour: an edge
    {"start": "2026-01-01T10:40:00Z", "end": "2026-01-01T10:55:00Z"},  # inside one hour
]
SHAPES: list[dict[str, Any]] = [
    {},
    {"bucket": "hour"},
    {"group_by": ("region",)},
    {"bucket": "day", "group_by": ("user",)},
]


def usage(ledger: Ledger, org: str, **kw: Any) -> list[dict[str, Any]]:
    return ledger.usage(org, UsageQuery(meter="downloads", **kw))


def same_answers(ledger: Ledger, org: str, reference: str) -> None:
    """Every query answers for ``org`` exactly what it answers for ``reference``."""
    for query in QUERIES:
        for span in PERIODS:
            for shape in SHAPES:
                kw = {**query, **span, **shape}
                assert usage(ledger, org, **kw) == usage(ledger, reference, **kw), kw


@pytest.fixture(scope="module")
def reference(shared_ledger: Ledger) -> str:
    """An organisation holding only the measurements that count."""
    org = fresh_org()
    shared_ledger.ingest(org, KEPT)
    return org


def test_a_cancel_voids_the_measurement_for_every_answer(shared_ledger: Ledger, reference: str) -> None:
    org = fresh_org()
    shared_ledger.ingest(org, [U1, U2, U3, U4])
    assert usage(shared_ledger, org, aggregation="MAX", target="bytes", account="acme")[0]["value"] == 300
    assert shared_ledger.ingest(org, [reversal(U2)]) == Ingested(1, 0)
    same_answers(shared_ledger, org, reference)
    acme = {"account": "acme"}
    assert usage(shared_ledger, org, target="bytes", **acme)[0]["value"] == 150
    assert usage(shared_ledger, org, aggregation="COUNT", **acme)[0]["value"] == 2
    assert usage(shared_ledger, org, aggregation="MAX", target="bytes", **acme)[0]["value"] == 100
    assert usage(shared_ledger, org, aggregation="MIN", target="bytes", **acme)[0]["value"] == 50
    assert usage(shared_ledger, org, aggregation="LATEST", target="bytes", **acme)[0]["value"] == 50
    assert usage(shared_ledger, org, aggregation="UNIQUE", target="user", **acme)[0]["value"] == 1
    by_region = usage(shared_ledger, org, target="bytes", group_by=("region",), **acme)
    assert [(r["region"], r["value"]) for r in by_region] == [("eu", 150)]
    # a period that starts mid-hour reads the edge from the rows: the voided ones stay out
    edge = {"start": "2026-01-01T10:30:00Z", "end": "2026-01-01T11:30:00Z", **acme}
    assert usage(shared_ledger, org, target="bytes", **edge)[0]["value"] == 50
    assert usage(shared_ledger, org, aggregation="COUNT", bucket="hour", **edge) == [
        {"meter": "downloads", "account": "acme", "bucket": "2026-01-01T11:00:00.000Z", "value": 1}
    ]


def test_a_reversal_before_its_original_voids_it_when_it_arrives(shared_ledger: Ledger, reference: str) -> None:
    org, together = fresh_org(), fresh_org()
    assert shared_ledger.ingest(org, [reversal(U2)]) == Ingested(1, 0)
    assert usage(shared_ledger, org, target="bytes") == []  # a reversal alone counts for nothing
    shared_ledger.ingest(org, KEPT[:1])
    shared_ledger.ingest(org, [U2, *KEPT[1:]])
    same_answers(shared_ledger, org, reference)
    shared_ledger.ingest(together, [reversal(U2), U1, U2, U3, U4])  # one batch, the reversal first
    same_answers(shared_ledger, together, reference)
    conn = shared_ledger.connection()
    try:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM orphans")
        assert cur.fetchone()[0] == 0  # every waiting reversal found its original
    finally:
        conn.close()


def test_an_amendment_counts_the_replacement_and_chains(shared_ledger: Ledger, shared_api: TestClient) -> None:
    org = fresh_org()
    original = m("2026-01-01T10:15:00.000Z", 100, "ann")
    other = m("2026-01-01T10:20:00.000Z", 1, "bob")
    shared_ledger.ingest(org, [original, other])
    first = replacement(original, {"measure.bytes": 3})
    assert shared_ledger.ingest(org, [reversal(original), first]) == Ingested(2, 0)
    assert usage(shared_ledger, org, target="bytes")[0]["value"] == 4
    assert usage(shared_ledger, org, aggregation="COUNT")[0]["value"] == 2
    assert usage(shared_ledger, org, aggregation="MAX", target="bytes")[0]["value"] == 3
    second = replacement(first, {"measure.bytes": 7.25})  # the second amend corrects the live version
    shared_ledger.ingest(org, [reversal(first), second])
    for kw, value in [
        ({"target": "bytes"}, Decimal("8.25")),
        ({"aggregation": "COUNT"}, 2),
        ({"aggregation": "MAX", "target": "bytes", "bucket": "hour"}, Decimal("7.25")),
        ({"aggregation": "LATEST", "target": "bytes"}, 1),  # "other", 10:20, is later than 10:15
        ({"target": "bytes", "start": "2026-01-01T10:10:00Z", "end": "2026-01-01T10:18:00Z"}, Decimal("7.25")),
    ]:
        assert usage(shared_ledger, org, **kw)[0]["value"] == value, kw

    def state(u: str) -> dict[str, Any]:
        found = shared_api.get(f"/organizations/{org}/measurements/{u}", headers=AUTH)
        assert found.status_code == 200, found.text
        body: dict[str, Any] = found.json()
        return body

    assert state(original["uid"])["corrected"] == {
        "reversed_by": reversal_uid(original["uid"]),
        "replaced_by": first["uid"],
    }
    assert state(first["uid"])["corrected"] == {"reversed_by": reversal_uid(first["uid"]), "replaced_by": second["uid"]}
    assert state(second["uid"]) == {**second, "corrected": {"reversed_by": None, "replaced_by": None}}
    assert state(reversal_uid(original["uid"])) == {
        **reversal(original),
        "corrected": {"reversed_by": None, "replaced_by": None},
    }


def test_resending_corrections_changes_nothing(shared_ledger: Ledger) -> None:
    org = fresh_org()
    original = m("2026-01-01T10:15:00.000Z", 100, "ann")
    fixed = replacement(original, {"measure.bytes": 3})
    shared_ledger.ingest(org, [original, reversal(original), fixed])
    before = [usage(shared_ledger, org, **q) for q in QUERIES]
    for _ in range(2):  # the same command run twice writes the same measurements: duplicates
        assert shared_ledger.ingest(org, [reversal(original), replacement(original, {"measure.bytes": 3})]) == Ingested(
            0, 2
        )
    assert shared_ledger.conflicts(org) == []
    assert [usage(shared_ledger, org, **q) for q in QUERIES] == before
    assert usage(shared_ledger, org, target="bytes")[0]["value"] == 3


def test_reconciliation_digests_cover_every_stored_row(shared_ledger: Ledger) -> None:
    """The ledger's per-hour digests match the agent's over everything delivered: the
    reversal and the voided original included."""
    org = fresh_org()
    original = m("2026-01-01T10:15:00.000Z", 100, "ann")
    delivered = [original, m("2026-01-01T10:16:00.000Z", 5, "bob"), reversal(original)]
    delivered.append(replacement(original, {"measure.bytes": 1}))
    shared_ledger.ingest(org, delivered[:2])
    shared_ledger.ingest(org, delivered[2:])
    agent_side = Digest()
    for record in delivered:
        agent_side.add(content_hash(record))
    lo, hi = (parse_instant(t, "bound") // 10**6 for t in ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"))
    buckets = Digests(shared_ledger).buckets(org, lo, hi)
    assert len(buckets) == 1 and buckets[0]["count"] == 4
    assert {k: buckets[0][k] for k in agent_side.as_json()} == agent_side.as_json()
    looked_up = Digests(shared_ledger).lookup(org, [r["uid"] for r in delivered])["measurements"]
    assert {x["uid"]: x["content_hash"] for x in looked_up} == {r["uid"]: content_hash(r) for r in delivered}
    assert shared_ledger.count(org) == 4  # stored: all of them; counted by usage: two
    assert usage(shared_ledger, org, aggregation="COUNT")[0]["value"] == 2


def test_a_batch_is_listed_in_uid_order_page_by_page(shared_ledger: Ledger, shared_api: TestClient) -> None:
    org = fresh_org()
    backfill = [{**m(f"2026-01-0{1 + i % 3}T0{i % 10}:00:00.000Z", i, "ann"), "batch": "bf-1"} for i in range(25)]
    others = [{**m("2026-01-01T10:00:00.000Z", 1, "bob"), "batch": "bf-2"}, m("2026-01-01T10:00:00.000Z", 2, "cy")]
    r = shared_api.post(f"/organizations/{org}/measurements", json={"measurements": backfill + others}, headers=AUTH)
    assert r.status_code == 200, r.text
    pages, after = [], None
    while True:
        params: dict[str, Any] = {"batch": "bf-1", "limit": 10, **({"after": after} if after else {})}
        page = shared_api.get(f"/organizations/{org}/measurements", params=params, headers=AUTH)
        assert page.status_code == 200, page.text
        pages.append(page.json()["measurements"])
        after = page.json()["next"]
        if after is None:
            break
    assert [len(p) for p in pages] == [10, 10, 5]
    untouched = {"reversed_by": None, "replaced_by": None}
    listed = sorted(backfill, key=lambda x: x["uid"])
    assert [x for p in pages for x in p] == [{**x, "corrected": untouched} for x in listed]  # full wire records
    # each listed measurement says how it was corrected: no request per measurement to know
    cancelled, amended = listed[3], listed[17]
    fixed = replacement(amended, {"measure.bytes": 1000})
    assert shared_ledger.ingest(org, [reversal(cancelled), reversal(amended), fixed]) == Ingested(3, 0)
    page = shared_api.get(f"/organizations/{org}/measurements", params={"batch": "bf-1"}, headers=AUTH).json()
    assert {x["uid"]: x["corrected"] for x in page["measurements"]} == {
        **{x["uid"]: untouched for x in listed},
        cancelled["uid"]: {"reversed_by": reversal_uid(cancelled["uid"]), "replaced_by": None},
        amended["uid"]: {"reversed_by": reversal_uid(amended["uid"]), "replaced_by": fixed["uid"]},
    }
    one = shared_api.get(f"/organizations/{org}/measurements", params={"batch": "bf-2"}, headers=AUTH).json()
    assert one == {"measurements": [{**others[0], "corrected": untouched}], "next": None}
    assert shared_api.get(f"/organizations/{org}/measurements", params={"batch": "bf-9"}, headers=AUTH).json() == {
        "measurements": [],
        "next": None,
    }
    too_many = shared_api.get(
        f"/organizations/{org}/measurements", params={"batch": "bf-1", "limit": 10_001}, headers=AUTH
    )
    assert too_many.status_code == 422
    assert shared_api.get(f"/organizations/{org}/measurements", params={"batch": "bf-1"}).status_code == 401
    # stored compactly, not whole: their meter's queries are still answered from the rollups
    expected = sum(range(25)) + 3 - cancelled["measure"]["bytes"] - amended["measure"]["bytes"] + 1000
    assert usage(shared_ledger, org, target="bytes", account="acme")[0]["value"] == expected


def test_a_reversal_for_another_account_is_refused_by_itself(shared_ledger: Ledger, shared_api: TestClient) -> None:
    org = fresh_org()
    original = m("2026-01-01T10:15:00.000Z", 100, "ann")
    shared_ledger.ingest(org, [original])
    forged = {**reversal(original), "account": "globex"}
    neighbour = m("2026-01-01T10:20:00.000Z", 7, "bob")
    r = shared_api.post(f"/organizations/{org}/measurements", json={"measurements": [neighbour, forged]}, headers=AUTH)
    assert r.status_code == 400, r.text
    body = r.json()
    assert [(e["index"], e["uid"], e["reason"], e["field"]) for e in body["errors"]] == [
        (1, forged["uid"], "bad_correction", "correction.of")
    ]
    message = body["errors"][0]["message"]
    assert "'globex'" in message and "'acme'" in message and original["uid"] in message
    assert body["accepted"] == 1  # the rest of the request was stored
    assert shared_api.get(f"/organizations/{org}/measurements/{forged['uid']}", headers=AUTH).status_code == 404
    assert usage(shared_ledger, org, target="bytes")[0]["value"] == 107
    got = shared_api.get(f"/organizations/{org}/measurements/{original['uid']}", headers=AUTH).json()
    assert got["corrected"] == {"reversed_by": None, "replaced_by": None}
    # a client resends the rest: a duplicate; the refused one alone is refused again
    again = shared_ledger.ingest(org, [neighbour, forged])
    assert (again.accepted, again.duplicates, [x.uid for x in again.refused]) == (0, 1, [forged["uid"]])
    alone = shared_ledger.ingest(org, [forged])
    assert (alone.accepted, alone.duplicates, [(x.index, x.reason) for x in alone.refused]) == (
        0,
        0,
        [(0, "bad_correction")],
    )
    # the original and its forged reversal in one batch: refused the same way
    other = fresh_org()
    both = shared_ledger.ingest(other, [original, forged])
    assert (both.accepted, [x.index for x in both.refused]) == (1, [1])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"measure": {"bytes": -1}}, "measure.bytes is -1, "),  # would void all 100 of it
        ({"measure": {"bytes": -100.0}}, "measure.bytes is -100.0, "),  # another type, another digest
        ({"ts": "2026-01-01T11:15:00.000Z"}, "ts is '2026-01-01T11:15:00.000Z'"),
        ({"who": {"user": "bob"}}, "who.user is 'bob'"),
        ({"ets": "2026-01-01T10:15:01.000Z"}, "ets is '2026-01-01T10:15:01.000Z'"),
    ],
)
def test_a_reversal_that_is_not_exactly_the_originals_is_refused(
    shared_ledger: Ledger, change: dict[str, Any], named: str
) -> None:
    original = m("2026-01-01T10:15:00.000Z", 100, "ann")
    bad = {**reversal(original), **change}
    for batches in ([[original], [bad]], [[original, bad]]):  # stored before, or first in the same batch
        org = fresh_org()
        outcomes = [shared_ledger.ingest(org, batch) for batch in batches]
        [refused] = outcomes[-1].refused
        assert (refused.uid, refused.reason, refused.field) == (bad["uid"], "bad_correction", "correction.of")
        assert named in refused.message and original["uid"] in refused.message, refused.message
        assert usage(shared_ledger, org, target="bytes")[0]["value"] == 100  # the original counts, whole
        assert shared_ledger.ingest(org, [reversal(original)]) == Ingested(1, 0)  # the true one is not blocked
        assert usage(shared_ledger, org, target="bytes") in (
            [],
            [{"meter": "downloads", "account": "acme", "value": 0}],
        )


def test_nothing_corrects_a_reversal(shared_ledger: Ledger) -> None:
    org = fresh_org()
    original, kept = m("2026-01-01T10:15:00.000Z", 100, "ann"), m("2026-01-01T10:16:00.000Z", 5, "bob")
    cancel = reversal(original)
    shared_ledger.ingest(org, [original, kept, cancel])
    for bad in (replacement(cancel, {"measure.bytes": 7}), reversal(cancel)):
        [refused] = shared_ledger.ingest(org, [bad]).refused
        assert refused.reason == "bad_correction" and f"correct {original['uid']} instead" in refused.message
        # in the same batch as the reversal it corrects: the same
        other = fresh_org()
        outcome = shared_ledger.ingest(other, [original, cancel, bad])
        assert (outcome.accepted, [r.index for r in outcome.refused]) == (2, [2])
    assert usage(shared_ledger, org, target="bytes")[0]["value"] == 5
    # a correction of a reversal that arrives before the reversal counts until the reversal does
    late = fresh_org()
    amend = replacement(cancel, {"measure.bytes": 7})
    shared_ledger.ingest(late, [original, kept, amend])
    assert usage(shared_ledger, late, target="bytes")[0]["value"] == 112
    shared_ledger.ingest(late, [cancel])
    assert usage(shared_ledger, late, target="bytes")[0]["value"] == 5


def test_a_reversal_before_an_original_it_does_not_match_voids_nothing(
    shared_ledger: Ledger, shared_api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Stored first (its original unknown), a reversal cannot be judged; when the original
    arrives and the reversal is not exactly its reversal, the original counts, the reversal
    still does not, and the mismatch is listed as a conflict of the reversal's uid."""
    org = fresh_org()
    original = m("2026-01-01T10:15:00.000Z", 100, "ann")
    bad = {**reversal(original), "measure": {"bytes": -1}}
    assert shared_ledger.ingest(org, [bad]) == Ingested(1, 0)
    with caplog.at_level("WARNING", logger="meterkit.ledger"):
        assert shared_ledger.ingest(org, [original]) == Ingested(1, 0)
    assert usage(shared_ledger, org, target="bytes")[0]["value"] == 100
    assert usage(shared_ledger, org, aggregation="COUNT")[0]["value"] == 1
    [conflict] = shared_api.get(f"/organizations/{org}/conflicts", headers=AUTH).json()["conflicts"]
    assert conflict["uid"] == bad["uid"] and conflict["other"] == reversal(original)
    assert (conflict["firstHash"], conflict["otherHash"]) == (content_hash(bad), content_hash(reversal(original)))
    assert any(bad["uid"] in r.getMessage() and "measure.bytes is -1" in r.getMessage() for r in caplog.records)


def _open_write(ledger: Ledger, org: str, records: list[dict[str, Any]]) -> Any:
    """Write ``records`` as an ingest does, in a transaction left open: the connection."""
    conn = ledger.connection()
    cur = conn.cursor()
    if not ledger.postgres:
        cur.execute("BEGIN IMMEDIATE")
    ledger.writer.write(cur, org, ledger.writer.split(records))
    return conn


def _waiting(ledger: Ledger) -> bool:
    """PostgreSQL: whether some transaction waits for a lock."""
    conn = ledger.connection()
    try:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        return bool(cur.fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("first", ["original", "reversal"])
def test_an_original_and_its_reversal_ingested_at_once_void_it(shared_ledger: Ledger, first: str) -> None:
    """Two ledgers on one database (two processes' worth): one stores the original (or the
    reversal) in a transaction still open while the other stores the other one. Neither
    sees the other's rows until a commit; the original is voided all the same."""
    org = fresh_org()
    original = m("2026-03-01T10:15:00.000Z", 100, "ann")
    held, sent = (original, reversal(original)) if first == "original" else (reversal(original), original)
    second = Ledger(shared_ledger.url)
    outcome: list[Any] = []
    try:
        for ledger in (shared_ledger, second):  # each knows the month's partition, series, shape and fields
            ledger.ingest(org, [m("2026-03-01T11:00:00.000Z", 1, "ann")])
        conn = _open_write(shared_ledger, org, [held])
        try:
            thread = threading.Thread(target=lambda: outcome.append(second.ingest(org, [sent])))
            thread.start()
            if shared_ledger.postgres:  # SQLite: it waits for the write lock (BEGIN IMMEDIATE)
                wait_for(lambda: not thread.is_alive() or _waiting(shared_ledger), what="the second ingest")
            conn.commit()
            shared_ledger.writer.committed()
        finally:
            conn.close()
        thread.join()
        assert outcome == [Ingested(1, 0)]
        assert usage(shared_ledger, org, target="bytes") == [{"meter": "downloads", "account": "acme", "value": 2}]
        assert usage(shared_ledger, org, aggregation="COUNT")[0]["value"] == 2
    finally:
        second.close()


def test_a_served_ledger_applies_corrections(tmp_path: Path) -> None:
    """``meterkit ledger serve`` as a process: a cancel and an amendment over HTTP."""
    server = start_ledger(tmp_path)
    try:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        base = f"{server.url}/organizations/acme-corp"
        original, kept = m("2026-01-01T10:15:00.000Z", 100, "ann"), m("2026-01-01T10:16:00.000Z", 9, "bob")
        fixed = replacement(original, {"measure.bytes": 40})
        for batch in ([original, kept], [reversal(original), fixed]):
            assert session.post(f"{base}/measurements", json={"measurements": batch}, timeout=30).status_code == 200
        total = session.get(f"{base}/usage", params={"meter": "downloads", "field": "bytes"}, timeout=30).json()
        assert total["data"][0]["value"] == 49
        state = session.get(f"{base}/measurements/{original['uid']}", timeout=30).json()
        assert state == {
            **original,
            "corrected": {"reversed_by": reversal_uid(original["uid"]), "replaced_by": fixed["uid"]},
        }
    finally:
        server.proc.kill()
