"""What reconciliation by measurement costs: one day of 1,000,000 measurements in a ledger
database (SQLite, the embedded default, stored through ``Ledger.ingest`` as the agent's
requests store them), the audit journal an agent delivering them writes (keyed chain, a
``delivery`` entry with per-bucket digests and an SDK tally per batch), and
``reconcile`` timed over the day.

The day: 4 meters x 50 accounts, the measurements spread evenly over 24 hours, recorded
by 4 application processes (SDK uids), delivered in time order in batches of
``batch`` (1,000: a busy agent's full batches; a quiet one sends smaller batches, and
the journal then holds more, smaller entries). Also timed: the commit step's added cost
per measurement (one content hash each), a drill-down after 10 rows are edited in place,
and the command line end to end. The ledger keeps each bucket's count and content digest
in its hourly rollup at ingest, so the per-bucket pass reads one rollup row per hour.

``run()`` returns the figures; nothing here asserts a time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from meterkit._model import tally
from meterkit_agent.audit.backends import LedgerDbBackend
from meterkit_agent.audit.journal import Journal, compress_uids, read_key, uid_digest
from meterkit_agent.audit.journalview import JournalView
from meterkit_agent.audit.reconcile import reconcile
from meterkit_agent.exporters.exporterhelper import idempotency_key
from meterkit_agent.ledger import Ledger
from meterkit_agent.ledger.codec import Codec
from meterkit_agent.ledger.ingest import uid_key, uid_text
from meterkit_agent.pipeline.commit import delivery_totals

ORG = "bench"
DAY_START_MS = 1_793_577_600_000  # 2026-11-02T00:00:00Z
DAY = ("2026-11-02T00:00:00.000Z", "2026-11-03T00:00:00.000Z")
WRITERS = [f"{w:08x}-1a2b-8c3d-9e4f-" for w in (0x5EED0001, 0x5EED0002, 0x5EED0003, 0x5EED0004)]


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def measurements(n: int, batch: int, days: int = 1) -> Iterator[list[dict[str, Any]]]:
    """The period's measurements in time order, ``batch`` at a time."""
    chunk: list[dict[str, Any]] = []
    for i in range(n):
        w = i % len(WRITERS)
        chunk.append(
            {
                "uid": f"{WRITERS[w]}{i // len(WRITERS) + 1:012x}",
                "meter": f"meter_{(i * 7) % 4}",
                "account": f"account-{(i * 7919) % 50:03d}",
                "ts": _iso(DAY_START_MS + i * 86_400_000 * days // n),
                "measure": {"bytes": (i * 37) % 100_000, "calls": 1},
                "who": {"user": f"user-{i % 997}"},
            }
        )
        if len(chunk) == batch:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def delivery(chunk: list[dict[str, Any]]) -> dict[str, Any]:
    """The journal entry the agent's commit step writes for a delivered batch."""
    uids = [m["uid"] for m in chunk]
    sources = []
    for w, prefix in enumerate(WRITERS):
        mine = [u for u in uids if u.startswith(prefix)]
        sources.append({"segment": f"seg-{w}.mks", "writer": f"{1000 + w}@bench", "uids": compress_uids(mine)})
    return {
        "type": "delivery",
        "batch": uuid.uuid4().hex,
        "idempotency_key": idempotency_key(uids),
        "uid_digest": uid_digest(uids),
        "count": len(chunk),
        "totals": delivery_totals(chunk),
        "sources": sources,
        "exporters": [{"exporter": "ledger", "status": "acknowledged", "refused": 0, "answer": "stored"}],
        "positions": {f"seg-{w}.mks": 0 for w in range(len(WRITERS))},
    }


def build(folder: Path, n: int, batch: int, days: int = 1) -> tuple[Path, str, float]:
    url = f"sqlite:///{folder / 'ledger.db'}"
    state = folder / "agent-state"
    ledger, journal = Ledger(url), Journal(state)
    start = time.perf_counter()
    for chunk in measurements(n, batch, days):
        ledger.ingest(ORG, chunk)
        tallied = {"type": "sdk_tally", "entries": tally(chunk), "source": "seg-0.mks", "writer": "1000@bench"}
        journal.append([tallied, delivery(chunk)])
    ledger.close()
    return state, url, time.perf_counter() - start


def best(fn: Callable[[], Any], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def commit_cost_us(n: int = 50_000) -> dict[str, float]:
    """Per measurement: the tally the commit step always made, and with the digests."""
    chunk = next(measurements(n, n))
    return {
        "tally_us": best(lambda: tally(chunk)) / n * 1e6,
        "tally_with_digests_us": best(lambda: delivery_totals(chunk)) / n * 1e6,
    }


def period(days: int) -> tuple[str, str]:
    return _iso(DAY_START_MS), _iso(DAY_START_MS + days * 86_400_000)


def month(n: int = 10_000_000, batch: int = 1_000, days: int = 30) -> dict[str, Any]:
    """One month (30 days) of ``n`` measurements, reconciled, measured (not extrapolated)."""
    with tempfile.TemporaryDirectory(prefix="meterkit-bench-reconcile-") as tmp:
        state, url, built = build(Path(tmp), n, batch, days)
        backend = LedgerDbBackend(url, ORG)
        start = time.perf_counter()
        report = reconcile(state, backend, *period(days))
        took = time.perf_counter() - start
        return {
            "measurements": n,
            "days": days,
            "build_s": built,
            "reconcile_s": took,
            "reconciled": not report.unexplained,
        }


def _timings(state: Path, url: str) -> dict[str, float]:
    backend = LedgerDbBackend(url, ORG)
    key = read_key(state)

    def clean() -> None:
        report = reconcile(state, backend, *DAY)
        assert not report.unexplained, [d.as_dict() for d in report.unexplained][:3]

    def journal_pass() -> None:
        JournalView(state / "journal.jsonl", key, None, DAY).read()

    return {
        "reconcile_s": best(clean),
        "journal_pass_s": best(journal_pass),
        "ledger_buckets_s": best(lambda: backend.buckets(*DAY, None, None)),
    }


def run(n: int = 1_000_000, batch: int = 1_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meterkit-bench-reconcile-") as tmp:
        folder = Path(tmp)
        state, url, built = build(folder, n, batch)
        journal_bytes = (state / "journal.jsonl").stat().st_size
        out: dict[str, Any] = {"measurements": n, "batch": batch, "build_s": built, "journal_mb": journal_bytes / 1e6}
        out.update(commit_cost_us())
        out.update(_timings(state, url))

        cli = [sys.executable, "-m", "meterkit_agent.cli", "reconcile", "--state-dir", str(state)]
        cli += ["--db", url, "--org", ORG, "--from", DAY[0], "--to", DAY[1], "--json"]
        start = time.perf_counter()
        done = subprocess.run(cli, capture_output=True, text=True, check=False)
        out["reconcile_cli_s"] = time.perf_counter() - start
        out["cli_reconciled"] = done.returncode == 0 and json.loads(done.stdout)["reconciled"]

        out.update(drill_down(state, url))
    # A month is 30 such days: both passes are linear in what the period holds (the journal
    # is read once, the ledger's rows of the period once, per meter and account by index),
    # and they overlap, so the longer of the two sets the pace.
    out["month_estimate_s"] = 30 * max(out["journal_pass_s"], out["ledger_buckets_s"])
    return out


def drill_down(state: Path, url: str) -> dict[str, Any]:
    """10 rows edited in place (a trigger marks their hours' rollups dirty, so those hours
    are recomputed from their rows), reconciled, then put back as they were."""
    ledger = Ledger(url)
    codec = Codec()
    conn = ledger.connection()
    try:
        cur = conn.cursor()
        cur.execute("SELECT uid FROM measurements ORDER BY rowid LIMIT 10")
        uids = [uid_text(u) for (u,) in cur.fetchall()]
    finally:
        conn.close()
    originals = ledger.get_many(ORG, uids)

    def put(bodies: dict[str, dict[str, Any]]) -> None:
        conn = ledger.connection()
        try:
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            for uid, body in bodies.items():
                cur.execute("UPDATE measurements SET nums = ? WHERE uid = ?", (codec.split(body)[2], uid_key(uid)))
            conn.commit()
        finally:
            conn.close()

    put({u: {**m, "measure": {**m["measure"], "calls": 2}} for u, m in originals.items()})
    backend = LedgerDbBackend(url, ORG)  # opening a ledger is not reconciling: outside the timing
    start = time.perf_counter()
    report = reconcile(state, backend, *DAY)
    took = time.perf_counter() - start
    put(originals)
    ledger.close()
    named = sorted(u["uid"] for d in report.differences if d.kind == "altered" for u in d.uids)
    return {"reconcile_10_altered_s": took, "altered_named": len(named), "altered_named_right": named == sorted(uids)}


if __name__ == "__main__":
    if sys.argv[1:2] == ["month"]:
        figures = month(*(int(a) for a in sys.argv[2:4]))
    else:
        figures = run(*(int(a) for a in sys.argv[1:3]))
    print(json.dumps(figures, indent=2))
