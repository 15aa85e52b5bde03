"""Erasure at the ledger, on SQLite and PostgreSQL: a subject's pseudonyms and raw value
leave every stored measurement and conflict, every usage answer stays byte-identical
(UNIQUE included), reconciliation's digests and uid listings still give what was
delivered, the dirty mark the UPDATE set is cleared only where the hour still digests to
what was ingested, and a second erasure changes nothing."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from fastapi.testclient import TestClient

from meterkit._model import content_hash
from meterkit._pseudonyms import Key, Keyring
from meterkit_agent.ledger import Ledger, UsageQuery
from meterkit_agent.ledger.digests import Digests
from meterkit_agent.ledger.erasure import erase
from tests.agent.ledger.conftest import AUTH, fresh_org, measurement

KEYS = Keyring([Key("k1", b"a" * 40), Key("k2", b"b" * 40, 1_767_225_600 * 10**9)])  # k2 from 2026-01-01
SUBJECT = "ann@example.com"
OLD_FORM, NEW_FORM = KEYS.pseudonyms_of(SUBJECT)
OTHER = KEYS.pseudonyms_of("bob@example.com")[1]
SHA = hashlib.sha256(SUBJECT.encode()).hexdigest()


def batch() -> list[dict[str, Any]]:
    def m(ts: str, n: int | float, user: str, **more: Any) -> dict[str, Any]:
        return measurement(str(uuid.uuid4()), ts, measure={"bytes": n}, who={"user": user}, **more)

    return [
        m("2025-12-31T23:10:00.000Z", 7, OLD_FORM),  # before the rotation: k1's pseudonym
        m("2026-01-01T10:15:00.000Z", 100, NEW_FORM, where={"region": "eu"}),
        m("2026-01-01T10:20:00.000Z", 1.25, NEW_FORM, metadata={"note": "x"}),
        m("2026-01-01T10:45:00.000Z", 300, OTHER),
        m("2026-01-01T10:50:00.000Z", 5, SUBJECT),  # recorded before pseudonymization: raw
        m("2026-01-01T11:05:00.000Z", 50, OTHER, other={"by": NEW_FORM}),
    ]


def answers(ledger: Ledger, org: str) -> list[Any]:
    out = []
    for agg, field, bucket in [
        ("SUM", "bytes", None),
        ("SUM", "bytes", "hour"),
        ("MAX", "bytes", "day"),
        ("COUNT", None, "hour"),
        ("UNIQUE", "user", None),
        ("UNIQUE", "user", "hour"),
        ("LATEST", "bytes", None),
    ]:
        q = UsageQuery(meter="downloads", aggregation=agg, target=field, bucket=bucket)
        out.append(ledger.usage(org, q))
        # a period with edges: measurements answer the parts of hours
        out.append(ledger.usage(org, UsageQuery(meter="downloads", aggregation=agg, target=field, start="2026-01-01T10:17:00Z", end="2026-01-01T11:30:00Z")))  # fmt: skip
    return out


def everything(ledger: Ledger) -> str:
    """Every table's text, as one string (what a grep of the database would see)."""
    conn = ledger.connection()
    try:
        cur = conn.cursor()
        text = []
        for table in ("shapes", "measurements", "str_rollup", "conflicts", "erased"):
            cur.execute(f"SELECT * FROM {table}")
            text.append(repr(cur.fetchall()))
        return "\n".join(text)
    finally:
        conn.close()


def test_erasure_removes_the_subject_and_keeps_every_answer(shared_ledger: Ledger, shared_api: TestClient) -> None:
    ledger, org = shared_ledger, fresh_org()
    rows = batch()
    ledger.ingest(org, rows)
    resent = {**rows[1], "who": {"user": NEW_FORM}, "measure": {"bytes": 101}}  # a conflicting re-send
    assert ledger.ingest(org, [resent]).conflicts == 1
    digests = Digests(ledger)
    span = (1_700_000_000_000, 1_800_000_000_000)
    before_answers, before_buckets = answers(ledger, org), digests.buckets(org, *span)
    delivered = {m["uid"]: content_hash(m) for m in rows}

    dry = erase(ledger, org, "e1", [OLD_FORM, NEW_FORM], SHA, dry_run=True)
    assert sorted(dry.uids) == sorted(rows[i]["uid"] for i in (0, 1, 2, 4, 5)) and dry.conflicts == 1
    assert NEW_FORM in everything(ledger)  # a dry run changes nothing

    answer = shared_api.post(
        f"/organizations/{org}/privacy/erase",
        json={"id": "e1", "forms": [OLD_FORM, NEW_FORM], "sha256": SHA},
        headers=AUTH,
    )
    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert sorted(done["uids"]) == sorted(dry.uids) and done["hoursLeftDirty"] == 0 and done["conflicts"] == 1

    stored = {m["uid"]: m for m in ledger.rows(org)}
    assert stored[rows[0]["uid"]]["who"] == {"user": "erased:e1:1"}
    assert stored[rows[1]["uid"]]["who"] == {"user": "erased:e1:2"}
    assert stored[rows[4]["uid"]]["who"] == {"user": "erased:e1:0"}
    assert stored[rows[5]["uid"]]["other"] == {"by": "erased:e1:2"} and stored[rows[5]["uid"]]["who"]["user"] == OTHER
    assert {u: m["measure"] for u, m in stored.items()} == {m["uid"]: m["measure"] for m in rows}
    text = everything(ledger)
    assert OLD_FORM not in text and NEW_FORM not in text and SUBJECT not in text and OTHER in text
    assert ledger.conflicts(org)[0]["other"]["who"] == {"user": "erased:e1:2"}

    assert answers(ledger, org) == before_answers  # every total, UNIQUE included, exactly
    assert digests.buckets(org, *span) == before_buckets  # reconciliation: what was delivered
    hours = {(b["meter"], b["account"], b["hour"]) for b in before_buckets}
    assert {u: h for u, _, _, _, h in digests.listing(org, hours)} == delivered
    looked = digests.lookup(org, [rows[1]["uid"]])["measurements"][0]
    assert looked["content_hash"] == delivered[rows[1]["uid"]]

    again = erase(ledger, org, "e2", [OLD_FORM, NEW_FORM], SHA)
    assert again.uids == [] and again.conflicts == 0 and everything(ledger) == text

    # an id names its tokens: used again for another subject, two people would become one
    reused = shared_api.post(
        f"/organizations/{org}/privacy/erase", json={"id": "e1", "forms": [OTHER], "sha256": None}, headers=AUTH
    )
    assert reused.status_code == 409 and "e1" in reused.json()["message"]
    assert OTHER in everything(ledger)


def test_an_hour_altered_before_an_erasure_stays_dirty(shared_ledger: Ledger) -> None:
    ledger, org = shared_ledger, fresh_org()
    rows = batch()
    ledger.ingest(org, rows)
    digests = Digests(ledger)
    span = (1_700_000_000_000, 1_800_000_000_000)
    before = digests.buckets(org, *span)
    conn = ledger.connection()
    try:
        cur = conn.cursor()
        if not ledger.postgres:
            cur.execute("BEGIN")
        cur.execute(  # someone with the database edits a number of the subject's row
            f"UPDATE measurements SET nums = '999' WHERE ts_ms = {ledger.mark}", (1_767_262_500_000,)
        )
        conn.commit()
    finally:
        conn.close()
    outcome = erase(ledger, org, "e3", [OLD_FORM, NEW_FORM], SHA)
    assert outcome.dirty == 1  # the edited hour: its rows no longer digest to what was ingested
    after = digests.buckets(org, *span)
    assert [b for b in after if b not in before] and len(after) == len(before)


def test_a_bad_erasure_request_is_refused(shared_api: TestClient) -> None:
    for body in ({"id": "x"}, {"id": "x", "forms": [], "sha256": None}, {"id": "../x", "forms": ["k1:ab"]}, [1]):
        assert shared_api.post("/organizations/o/privacy/erase", json=body, headers=AUTH).status_code == 400
    assert shared_api.post("/organizations/o/privacy/erase", json={"id": "x", "forms": ["a"]}).status_code == 401
