"""The bench's memory: every ``make bench`` run appended to bench/results.json with its date,
commit and machine, so the README's figures can be ranges over the runs made, with the
machine named, rather than one lucky (or unlucky) run on a noisy 2-core box.

Ranges are taken over the runs on the same machine (the same description) and of the same
kind (full or ``BENCH_QUICK``): a quick run's smaller samples are not compared with a full
run's. The file keeps the last :data:`KEEP` runs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: ``BENCH_RESULTS`` names another file (a trial run that should not join the history).
RESULTS = Path(os.environ.get("BENCH_RESULTS") or Path(__file__).with_name("results.json")).resolve()
KEEP = 50


def machine() -> str:
    """One line naming the machine: CPU model, cores, memory, OS, Python."""
    model = "unknown CPU"
    memory = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = " ".join(line.split(":", 1)[1].split())
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB"
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()},"
        f" Python {platform.python_version()}"
    )


def commit() -> str:
    """The commit the run measured, with ``+changes`` when the working tree differed from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+changes" if dirty else head


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load(path: Path = RESULTS) -> list[dict[str, Any]]:
    """The runs kept so far, oldest first. A results file from before the history (one run,
    no date) is kept as the first entry, marked as such."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("runs"), list):
        return list(data["runs"])
    return [{"date": None, "commit": None, "machine": None, "quick": False, "legacy_format": True, "figures": data}]


def save(runs: list[dict[str, Any]], path: Path = RESULTS) -> None:
    body = {"about": "make bench runs, oldest first; see bench/run.py", "runs": runs[-KEEP:]}
    path.write_text(json.dumps(body, indent=1) + "\n")


def leaves(figures: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], float]]:
    """Every numeric figure with its path (booleans are not figures)."""
    if isinstance(figures, dict):
        for key, value in figures.items():
            yield from leaves(value, (*prefix, str(key)))
    elif isinstance(figures, list):
        for index, value in enumerate(figures):
            yield from leaves(value, (*prefix, str(index)))
    elif isinstance(figures, (int, float)) and not isinstance(figures, bool):
        yield prefix, float(figures)


class Ranges:
    """Minimum and maximum of each figure over the comparable runs (the latest included)."""

    def __init__(self, runs: list[dict[str, Any]], latest: dict[str, Any]) -> None:
        same = [r for r in runs if r.get("machine") == latest["machine"] and r.get("quick") == latest["quick"]]
        self.runs = len(same)
        self._seen: dict[tuple[str, ...], list[float]] = {}
        for run in same:
            for path, value in leaves(run.get("figures", {})):
                self._seen.setdefault(path, []).append(value)

    def get(self, *path: str) -> tuple[float, float, int] | None:
        values = self._seen.get(path)
        if not values:
            return None
        return min(values), max(values), len(values)
