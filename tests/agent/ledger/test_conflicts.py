"""A uid re-sent with different content is acknowledged, counted as a conflict, listed,
and the first content stored stands (inside one request too), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from meterkit._model import content_hash
from meterkit_agent.exporters.ledger import LedgerExporter, LedgerExporterConfig
from meterkit_agent.ledger import Ingested, Ledger
from tests.agent.ledger.conftest import AUTH, fresh_org, measurement

TS = "2026-03-01T10:00:00.000Z"
A = measurement("a", TS, measure={"bytes": 5})
A2 = {**A, "measure": {"bytes": 500}}
A3 = {**A, "measure": {"bytes": 7}}


def post(api: TestClient, org: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    r = api.post(f"/organizations/{org}/measurements", json={"measurements": records}, headers=AUTH)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def total(api: TestClient, org: str) -> Any:
    params = {"meter": "downloads", "field": "bytes"}
    return api.get(f"/organizations/{org}/usage", params=params, headers=AUTH).json()["data"][0]["value"]


def test_a_conflicting_resend_is_acknowledged_counted_and_listed(shared_api: TestClient) -> None:
    org = fresh_org()
    counts = ("accepted", "duplicates", "conflicts", "conflictingUids")
    answer = post(shared_api, org, [A])
    assert answer["result"] == "accepted" and [answer[k] for k in counts] == [1, 0, 0, []]
    assert [post(shared_api, org, [A])[k] for k in counts] == [0, 1, 0, []]
    answer = post(shared_api, org, [A2, A])
    assert answer["result"] == "accepted" and [answer[k] for k in counts] == [0, 1, 1, ["a"]]
    assert total(shared_api, org) == 5  # the first stored stands
    assert [post(shared_api, org, [A2])[k] for k in counts] == [0, 0, 1, ["a"]]  # counted again in each answer
    post(shared_api, org, [A3])
    listed = shared_api.get(f"/organizations/{org}/conflicts", headers=AUTH).json()["conflicts"]
    assert [(c["uid"], c["firstHash"], c["otherHash"], c["other"]) for c in listed] == [
        ("a", content_hash(A), content_hash(A2), A2),  # listed once per different content
        ("a", content_hash(A), content_hash(A3), A3),
    ]
    assert all(c["seenAt"].endswith("Z") for c in listed)
    assert shared_api.get(f"/organizations/{org}/conflicts", params={"uid": "b"}, headers=AUTH).json() == {
        "conflicts": []
    }
    stored = shared_api.get(f"/organizations/{org}/measurements/a", headers=AUTH).json()
    assert stored == {**A, "corrected": {"reversed_by": None, "replaced_by": None}}


def test_inside_one_request_the_first_occurrence_stands(shared_ledger: Ledger, shared_api: TestClient) -> None:
    org = fresh_org()
    b, b2 = measurement("b", TS, measure={"bytes": 1}), measurement("b", TS, measure={"bytes": 2})
    c = measurement("c", TS, measure={"bytes": 10})
    answer = post(shared_api, org, [b, c, b2, c, b2])
    assert (answer["accepted"], answer["duplicates"], answer["conflicts"]) == (2, 1, 2)
    assert answer["conflictingUids"] == ["b"]
    assert total(shared_api, org) == 11
    assert [x["other_hash"] for x in shared_ledger.conflicts(org)] == [content_hash(b2)]


def test_concurrent_senders_of_one_uid_store_it_once(shared_ledger: Ledger) -> None:
    """Eight requests race with eight contents for one uid: one is stored, seven are
    conflicts, and every answer adds up."""
    org = fresh_org()
    answers: list[Ingested] = []
    start = threading.Barrier(8)

    def send(i: int) -> None:
        start.wait()
        answers.append(shared_ledger.ingest(org, [measurement("race", TS, measure={"bytes": i})]))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(a.accepted for a in answers) == 1
    assert sum(a.conflicts for a in answers) == 7 and sum(a.duplicates for a in answers) == 0
    assert len(shared_ledger.conflicts(org)) == 7
    stored = shared_ledger.get(org, "race")
    assert stored is not None
    assert {c["first_hash"] for c in shared_ledger.conflicts(org)} == {content_hash(stored)}


def test_the_ledger_exporter_says_so_in_its_answer(tmp_path: Path) -> None:
    exporter = LedgerExporter("ledger", LedgerExporterConfig(db=f"sqlite:///{tmp_path / 'l.db'}", org_id="o"))
    try:
        assert exporter.export([A]) == []
        assert exporter.last_answer == "stored 1, already stored 0"
        assert exporter.export([A, A2]) == []
        assert exporter.last_answer == "stored 0, already stored 1, conflicting re-sends 1 (the first stored stands: a)"
    finally:
        exporter.shutdown()
