"""An anchored, keyed journal: emptied, truncated or rewritten, it is caught by ``meterkit
audit verify`` against the ledger's anchor (no ``--head`` kept by hand), and
``meterkit reconcile`` names every measurement the backend holds that the proven journal
no longer explains. Journals begun by an older agent still verify, and are keyed from a
marked point on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from meterkit_agent.audit.chain import Anchor, verify
from meterkit_agent.audit.journal import GENESIS, KEY_FILE, Journal, read_key
from tests.agent.audit.conftest import Scenario, named


def anchor_seq(scenario: Scenario) -> int:
    with scenario.ledger_db() as db:
        return int(db.execute("SELECT seq FROM anchors").fetchone()[0])


def extras(report: dict[str, object]) -> set[str]:
    return set(named(report, "extra_at_backend"))  # type: ignore[arg-type]


def test_an_emptied_journal_names_everything_the_backend_holds(scenario: Scenario) -> None:
    scenario.record()
    scenario.deliver()
    assert scenario.verify().returncode == 0
    scenario.journal.write_bytes(b"")
    done = scenario.verify()
    assert done.returncode == 1 and "entries were removed from the end" in done.stderr
    code, report, _ = scenario.reconcile()
    assert code == 1 and report["empty"] is False
    assert [d["kind"] for d in report["differences"] if d["kind"].startswith("journal_")] == ["journal_truncated"]
    held = set(scenario.stored("acme")) | set(scenario.stored("globex"))
    assert len(held) == 300 and extras(report) == held
    text = scenario.cli(
        "reconcile", "--config", str(scenario.config), "--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z"
    )
    assert "nothing was recorded" not in text.stdout and "NOT reconciled" in text.stdout


def test_a_truncated_journal_is_caught_by_its_anchor(scenario: Scenario) -> None:
    scenario.record()
    scenario.deliver()
    lines = scenario.journal.read_bytes().splitlines(keepends=True)
    deliveries = scenario.deliveries()
    # The anchor is the head a later request carried, so it lags the last delivery by one
    # or more (how many depends on how the agent cut its batches, which a busy machine
    # changes): cut the last delivery that stored anything and that the anchor covers.
    anchored = anchor_seq(scenario)
    last = [d for d in deliveries if d["_uids"] and d["seq"] <= anchored][-1]
    assert anchored < len(lines)
    cut = set().union(*(d["_uids"] for d in deliveries if d["seq"] >= last["seq"]))
    # Cut the last delivery and everything after it: the anchor is past the end now.
    scenario.journal.write_bytes(b"".join(lines[: last["seq"] - 1]))
    done = scenario.verify()
    assert done.returncode == 1 and f"anchor is entry {anchor_seq(scenario)}" in done.stderr
    code, report, _ = scenario.reconcile()
    assert code == 1 and any(d["kind"] == "journal_truncated" for d in report["differences"])
    assert extras(report) == cut  # each measurement of the cut deliveries, by uid
    # What lies after the anchor (it lags a batch) is not proven by it, but a cut there
    # still leaves the SDKs' tallies and the backend's usage unexplained.
    scenario.journal.write_bytes(b"".join(lines[: anchor_seq(scenario)]))
    assert scenario.verify().returncode == 0
    code, report, _ = scenario.reconcile()
    assert code == 1 and report["reconciled"] is False


def test_a_journal_rewritten_with_a_recomputed_unkeyed_chain_is_caught(scenario: Scenario) -> None:
    scenario.record()
    scenario.deliver()
    entries = scenario.entries()
    victim = scenario.deliveries()[1]
    for entry in entries:
        if entry.get("seq") == victim["seq"]:
            entry["totals"][0]["count"] -= 1  # hide a measurement, then recompute every hash
    scenario.rewrite_journal(entries)
    done = scenario.verify()
    assert done.returncode == 1 and "rewritten without the journal's key" in done.stderr
    code, report, _ = scenario.reconcile()
    assert code == 1 and any(d["kind"] == "journal_broken" for d in report["differences"])
    assert victim["_uids"] <= extras(report)  # nothing the rewritten journal says is trusted


def test_a_journal_rewritten_with_its_key_is_caught_by_the_anchor(scenario: Scenario) -> None:
    scenario.record()
    scenario.deliver()
    key = read_key(scenario.state)
    assert key is not None
    entries = scenario.entries()
    victim = scenario.deliveries()[1]
    for entry in entries:
        if entry.get("seq") == victim["seq"]:
            entry["totals"][0]["count"] -= 1
    scenario.rewrite_journal(entries, key)  # whoever holds the key can recompute a keyed chain
    assert scenario.cli("audit", "verify", "--state-dir", str(scenario.state)).returncode == 0  # locally sound
    done = scenario.verify()
    assert done.returncode == 1 and "does not have the hash the backend was given" in done.stderr
    code, report, _ = scenario.reconcile()
    assert code == 1 and any(d["kind"] == "journal_rewritten" for d in report["differences"])
    assert len(extras(report)) == 300


def _legacy(path: Path, n: int, at: str = "2026-01-01T00:00:00.000Z") -> list[dict[str, object]]:
    """A journal as an older agent wrote it: unkeyed, keys in insertion order."""
    prev, entries = GENESIS, []
    for seq in range(1, n + 1):
        entry: dict[str, object] = {"seq": seq, "prev": prev, "at": at, "type": "sdk_losses"}
        entry["entries"] = []
        prev = entry["hash"] = hashlib.sha256(
            prev.encode() + b"\n" + orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        entries.append(entry)
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    return entries


def test_an_unkeyed_journal_still_verifies_and_is_keyed_from_a_marked_point(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    _legacy(journal, 3)
    verdict = verify(journal)
    assert verdict.ok and verdict.entries == 3 and verdict.keyed_from is None
    assert any(note.startswith("unkeyed") for note in verdict.notes)

    Journal(tmp_path).append([{"type": "sdk_losses", "entries": []}])
    key = read_key(tmp_path)
    assert key is not None and (tmp_path / KEY_FILE).stat().st_mode & 0o777 == 0o600
    verdict = verify(journal, key=key)
    assert verdict.ok and verdict.entries == 5 and verdict.keyed_from == 4
    assert verdict.notes == ["entries 1 to 3 were written unkeyed by an older agent"]
    lines = journal.read_bytes().splitlines(keepends=True)
    assert (
        orjson.loads(lines[3])["type"] == "keyed" and orjson.loads(lines[4])["prev"] == orjson.loads(lines[3])["hash"]
    )
    assert not verify(journal).ok  # keyed entries need the key
    assert "journal.key is missing" in verify(journal).reason

    # Rewriting the unkeyed part, even recomputing its chain, breaks the keyed marker, and
    # then nothing before it is proven either.
    _legacy(tmp_path / "forged.jsonl", 3, at="2025-06-01T00:00:00.000Z")
    journal.write_bytes((tmp_path / "forged.jsonl").read_bytes() + b"".join(lines[3:]))
    verdict = verify(journal, key=key)
    assert not verdict.ok and verdict.line == 4 and verdict.trusted == 0


def test_a_keyed_journal_stripped_of_its_marker_does_not_verify(tmp_path: Path) -> None:
    Journal(tmp_path).append([{"type": "sdk_losses", "entries": []}] * 2)
    key = read_key(tmp_path)
    journal = tmp_path / "journal.jsonl"
    assert verify(journal, key=key).ok
    _legacy(journal, 2)  # the same entries, unkeyed, as if the marker had never been written
    verdict = verify(journal, key=key)
    assert not verdict.ok and "no entry is keyed" in verdict.reason and verdict.trusted == 0


@pytest.mark.parametrize(
    ("anchor", "ok", "reason"),
    [
        (lambda head: Anchor(2, head[2]), True, ""),
        (lambda head: Anchor(3, "0" * 64), False, "entries were removed from the end"),
        (lambda head: Anchor(2, "f" * 64), False, "rewritten"),
        (lambda head: Anchor(2, head[2], regressed="head 1:... after 2:..."), False, "go backwards"),
    ],
)
def test_verify_against_an_anchor(tmp_path: Path, anchor: object, ok: bool, reason: str) -> None:
    journal = Journal(tmp_path)
    journal.append([{"type": "sdk_losses", "entries": []}])
    heads = {e["seq"]: e["hash"] for e in map(orjson.loads, journal.path.read_bytes().splitlines())}
    verdict = verify(journal.path, key=read_key(tmp_path), anchor=anchor(heads))  # type: ignore[operator]
    assert verdict.ok is ok and reason in verdict.reason
    assert journal.anchor() == (journal.id, f"2:{heads[2]}")


def test_two_writers_key_an_unkeyed_journal_once(tmp_path: Path) -> None:
    """The agent opened the journal before `meterkit dlq replay` keyed it: one marker."""
    _legacy(tmp_path / "journal.jsonl", 2)
    agent, cli = Journal(tmp_path), Journal(tmp_path)
    cli.append([{"type": "sdk_losses", "entries": []}])
    agent.append([{"type": "sdk_losses", "entries": []}])
    verdict = verify(agent.path, key=read_key(tmp_path))
    assert verdict.ok and verdict.entries == 5 and verdict.keyed_from == 3
    assert agent.anchor() == (agent.id, f"5:{verdict.head}") and agent.id == cli.id
