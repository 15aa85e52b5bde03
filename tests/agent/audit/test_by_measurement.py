"""Reconciliation by measurement: the ledger's database is tampered with in each way that
totals cannot see (offsetting edits, a deletion beside a forgery, an edit beside a
deletion, a conflicting re-send), and ``meterkit reconcile`` must name every measurement
involved, by uid; an idempotent re-send (a backfill run twice) is no difference."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from meterkit_agent.audit.journal import read_key
from tests.agent.audit.conftest import Scenario, kinds, named
from tests.agent.conftest import wait_for


def acme_uids(scenario: Scenario, delivery: int) -> list[str]:
    """The acme uids one delivery put in the ledger, in order."""
    stored = scenario.stored("acme")
    return sorted(u for u in scenario.deliveries()[delivery]["_uids"] if u in stored)


def test_offsetting_edits_are_each_named_with_the_field_that_differs(scenario: Scenario) -> None:
    scenario.record()
    scenario.deliver()
    first, second = acme_uids(scenario, 0)[3], acme_uids(scenario, 1)[5]
    before = {u: scenario.stored("acme")[u]["measure"]["bytes"] for u in (first, second)}
    scenario.edit_value(first, +100)
    scenario.edit_value(second, -100)  # the account's total is unchanged
    code, report, _ = scenario.reconcile()
    assert code == 1 and report["reconciled"] is False
    altered = named(report, "altered")
    assert altered == {
        first: f"measure.bytes {before[first]} -> {before[first] + 100}",
        second: f"measure.bytes {before[second]} -> {before[second] - 100}",
    }
    assert {d["kind"] for d in report["differences"] if not d["explained"]} == {"altered"}


def test_edits_that_recompute_the_stored_hash_are_named_without_the_originals(scenario: Scenario) -> None:
    """The careful forger rewrites the row's content hash too; the spool segments are gone,
    so no field can be shown, but the digest arithmetic still names each uid."""
    scenario.record()
    scenario.deliver()
    shutil.rmtree(scenario.state / "retained")
    first, second = acme_uids(scenario, 0)[0], acme_uids(scenario, 2)[-1]
    scenario.edit_value(first, +7, rehash=True)
    scenario.edit_value(second, -7, rehash=True)
    code, report, _ = scenario.reconcile()
    altered = named(report, "altered")
    assert code == 1 and set(altered) == {first, second}
    assert all("the content hash differs" in detail for detail in altered.values())


def test_a_deleted_row_beside_a_forged_one_names_both(scenario: Scenario) -> None:
    scenario.record()
    scenario.deliver()
    gone = acme_uids(scenario, 1)[2]
    like = scenario.stored("acme")[gone]
    scenario.delete(gone)
    scenario.forge(like, "forged-0001")  # same meter, account and hour: the count is unchanged
    code, report, _ = scenario.reconcile()
    assert code == 1
    assert set(named(report, "missing_at_backend")) == {gone}
    assert named(report, "extra_at_backend") == {"forged-0001": "no proven journal entry delivered it"}
    assert ("missing_at_backend", "acme", 1, False) in kinds(report) and (
        "extra_at_backend",
        "acme",
        1,
        False,
    ) in kinds(report)


def test_an_altered_row_beside_a_deleted_one_is_reported(scenario: Scenario) -> None:
    scenario.record()
    scenario.deliver()
    gone, changed = acme_uids(scenario, 0)[:2]  # one delivery, one bucket
    value = scenario.stored("acme")[changed]["measure"]["bytes"]
    scenario.delete(gone)
    scenario.edit_value(changed, +5)
    code, report, _ = scenario.reconcile()
    assert code == 1
    assert set(named(report, "missing_at_backend")) == {gone}
    assert named(report, "altered") == {changed: f"measure.bytes {value} -> {value + 5}"}
    # Without the originals, two differences in one delivery's bucket cannot be told apart:
    # the deleted one is still named, and the rest is reported, never passed as reconciled.
    shutil.rmtree(scenario.state / "retained")
    code, report, _ = scenario.reconcile()
    assert code == 1 and set(named(report, "missing_at_backend")) == {gone}
    unresolved = [d for d in report["differences"] if d["kind"] == "unresolved"]
    assert len(unresolved) == 1 and changed in unresolved[0]["uids"][0]["detail"]


def write_history(path: Path, rows: list[tuple[str, str, int, str]]) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["account", "ts", "measure.bytes", "event"])
        out.writerows(rows)


def backfill(scenario: Scenario, path: Path) -> None:
    done = scenario.cli(
        "backfill", str(path), "--meter", "data_downloaded", "--spool-dir", str(scenario.spool), "--key", "event"
    )
    assert done.returncode == 0, done.stderr


def test_a_backfill_run_twice_reconciles(scenario: Scenario) -> None:
    history = scenario.tmp / "history.csv"
    write_history(history, [("initech", f"2026-01-01T{i % 24:02d}:10:00Z", i, f"ev{i}") for i in range(60)])
    for _ in range(2):  # the README: re-running the same backfill never double counts
        backfill(scenario, history)
        scenario.deliver(count=60)
    assert len(scenario.deliveries()) >= 2 and scenario.ledger.count() == 60
    code, report, _ = scenario.reconcile()
    assert code == 0 and report["reconciled"] is True, report["differences"]
    row = next(r for r in report["rows"] if r["account"] == "initech")
    assert (row["recorded"], row["delivered"], row["resent"], row["backend"]) == (120, 120, 60, 60)
    assert ("resent", "initech", 60, True) in kinds(report)
    repaired = scenario.cli(
        "reconcile",
        "--config",
        str(scenario.config),
        "--from",
        "2026-01-01T00:00:00Z",
        "--to",
        "2026-01-02T00:00:00Z",
        "--repair",
    )
    assert repaired.returncode == 0 and "re-sent" not in repaired.stderr


def test_a_conflicting_resend_is_named(scenario: Scenario) -> None:
    history = scenario.tmp / "history.csv"
    write_history(
        history, [("initech", "2026-01-01T03:10:00Z", 10, "ev1"), ("initech", "2026-01-01T04:10:00Z", 20, "ev2")]
    )
    backfill(scenario, history)
    scenario.deliver(count=2)
    # The same event ids again, one with another value: the same uid, other content.
    write_history(
        history, [("initech", "2026-01-01T03:10:00Z", 10, "ev1"), ("initech", "2026-01-01T04:10:00Z", 25, "ev2")]
    )
    backfill(scenario, history)
    scenario.start_agent()
    wait_for(lambda: len(scenario.deliveries()) == 2, timeout=30, what="the second delivery")
    scenario.stop_agent()
    code, report, _ = scenario.reconcile()
    conflicting = named(report, "conflicting")
    assert code == 1 and len(conflicting) == 1
    ((uid, detail),) = conflicting.items()
    assert "measure.bytes 25 -> 20" in detail and "refused it as a conflicting re-send" in detail
    assert ("resent", "initech", 1, True) in kinds(report)  # ev1 came again unchanged
    assert scenario.ledger.get(f"/organizations/test-org/measurements/{uid}")["measure"]["bytes"] == 20


def test_deliveries_journaled_without_digests_are_compared_by_uid(scenario: Scenario) -> None:
    """An older agent's deliveries carry no content digest: still every uid is accounted for."""
    scenario.record()
    scenario.deliver()
    key = read_key(scenario.state)
    assert key is not None
    entries = scenario.entries()
    for entry in entries:
        for row in entry.get("totals", []) if entry["type"] == "delivery" else []:
            del row["content"], row["check"]
    scenario.rewrite_journal(entries, key)
    with scenario.ledger_db() as db:  # nor did an older agent anchor its journal (a rewrite: caught)
        db.execute("DELETE FROM anchors")
    code, report, _ = scenario.reconcile()
    assert code == 0 and report["reconciled"] is True, report["differences"]
    gone = acme_uids(scenario, 1)[0]
    scenario.delete(gone)
    code, report, _ = scenario.reconcile()
    assert code == 1 and set(named(report, "missing_at_backend")) == {gone}
