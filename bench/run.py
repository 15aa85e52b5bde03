"""`make bench`: meterkit side by side with its peers, then the pipeline's own sections, in one
run; prints one report and appends the run to bench/results.json.

Nothing here asserts a time: these are measurements to read and compare, on whatever machine
runs them. What each figure means is printed with it (bench/report.py); how the peers are
driven is in bench/peers.py; the targets are judged from the figures (bench/targets.py).

The sections other than the peer table come from modules with owners of their own
(bench/e2e.py, ledger.py, postgres.py, reconcile.py, decisions.py, redundancy.py), each with
``run() -> dict``. Each runs in a child process of its own, with a time limit, so that one
that fails, hangs or leaves threads behind costs only its own section, printed as
"not available: <reason>".

``BENCH_QUICK=1`` makes a short run (smaller samples; such runs are ranged only with each
other): a section runs with ``run(quick=True)``, and is skipped if its ``run`` takes no
``quick``. ``BENCH_PEERS=meterkit,segment`` runs only those peers, ``BENCH_SECTIONS=e2e``
only those sections (``none`` for none): ``BENCH_PEERS=none BENCH_SECTIONS=decisions``
runs the limit decisions alone.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import history  # noqa: E402 - the bench's own modules, found beside this file
import report  # noqa: E402

#: figures key -> module
SECTIONS = {
    "end_to_end": "e2e",
    "ledger": "ledger",
    "postgres": "postgres",
    "reconcile": "reconcile",
    "decisions": "decisions",
    "redundancy": "redundancy",
}
SECTION_TIMEOUT_S = 1_200


def quick() -> bool:
    return os.environ.get("BENCH_QUICK", "") not in ("", "0")


def say(line: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def section_child(module: str, out: str) -> None:
    """In the child: call ``module.run()`` (with ``quick=`` if it takes it) and write its figures."""
    run = importlib.import_module(module).run
    if quick() and "quick" not in inspect.signature(run).parameters:
        # A short run keeps its promise: a section with no short form waits for a full run.
        figures: Any = {"not_available": "not run: BENCH_QUICK, and its run() takes no quick="}
    else:
        figures = run(quick=True) if quick() else run()
    Path(out).write_text(json.dumps(figures, default=str))


def _reason(log: str, returncode: int) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return f"exited {returncode}: {last[:300]}" if last else f"exited {returncode}"


def section(module: str) -> dict[str, Any]:
    """A section's figures, or ``{"not_available": reason}``."""
    if not (HERE / f"{module}.py").exists():
        return {"not_available": f"bench/{module}.py does not exist"}
    with tempfile.TemporaryDirectory() as tmp:
        out, log = Path(tmp) / "figures.json", Path(tmp) / "log"
        with log.open("w") as sink:
            try:
                done = subprocess.run(
                    [sys.executable, str(HERE / "run.py"), "--section", module, str(out)],
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    timeout=SECTION_TIMEOUT_S,
                    cwd=HERE.parent,
                )
            except subprocess.TimeoutExpired:
                return {"not_available": f"timed out after {SECTION_TIMEOUT_S} s"}
        if done.returncode != 0:
            return {"not_available": _reason(log.read_text(errors="replace"), done.returncode)}
        try:
            figures = json.loads(out.read_text())
        except (OSError, ValueError) as exc:
            return {"not_available": f"its run() gave no JSON figures ({type(exc).__name__})"}
    if not isinstance(figures, dict):
        return {"not_available": f"its run() returned {type(figures).__name__}, not a dict"}
    return figures


def peer_figures() -> dict[str, Any]:
    import peers

    try:
        return peers.run(quick(), say)
    except Exception as exc:  # the receivers could not start: the table says why, the rest runs
        reason = f"{type(exc).__name__}: {str(exc)[:300]}"
        return {"peers": {"not_available": reason}, "meterkit_sdk": {"not_available": reason}}


def wanted_sections() -> dict[str, str]:
    chosen = os.environ.get("BENCH_SECTIONS")
    if chosen is None:
        return SECTIONS
    names = set(chosen.split(","))
    return {key: module for key, module in SECTIONS.items() if module in names or key in names}


def main() -> None:
    started = time.monotonic()
    entry: dict[str, Any] = {
        "date": history.now(),
        "commit": history.commit(),
        "machine": history.machine(),
        "quick": quick(),
    }
    say("the peer table")
    figures = peer_figures()
    for key, module in wanted_sections().items():
        say(f"section {key} (bench/{module}.py)")
        figures[key] = section(module)
    for key in SECTIONS.keys() - figures.keys():
        figures[key] = {"not_available": "not run (BENCH_SECTIONS)"}
    entry["duration_s"] = round(time.monotonic() - started, 1)
    entry["figures"] = figures
    runs = [*history.load(), entry]
    history.save(runs)
    print(report.render(entry, runs))
    kept = min(len(runs), history.KEEP)
    print(f"\nappended to {history.RESULTS} ({kept} run{'s' if kept != 1 else ''} kept)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--section":
        section_child(sys.argv[2], sys.argv[3])
    else:
        main()
