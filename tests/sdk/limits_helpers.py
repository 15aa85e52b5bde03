"""Plans files and child processes for the limits tests."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def write_plans(path: Path, limits: str, thresholds: str = "[80, 100]") -> Path:
    """A plans file whose plan ``growth`` has ``limits`` (YAML flow items, one a line) and
    account ``acme`` on it since 2026."""
    items = "\n".join(f"      - {line.strip()}" for line in limits.strip().splitlines())
    path.write_text(
        textwrap.dedent("""\
        currency: USD
        plans:
          - code: growth
            bill_period: month
            limits:
        {items}
            thresholds: {thresholds}
        accounts:
          acme: [{{plan: growth, from: "2026-01-01T00:00:00Z"}}]
        """).format(items=items, thresholds=thresholds)
    )
    return path


#: A child that decides as fast as it can for ``seconds`` and prints
#: "<allowed> <first decision's monotonic ns> <last decision's monotonic ns>".
HAMMER = """
import sys, time, meterkit
plans, state, spool, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
extra = dict(arg.split("=", 1) for arg in sys.argv[5:])
meterkit.configure(spool_dir=spool, plans=plans, limits_state_dir=state, **extra)
allowed, first = 0, time.monotonic_ns()
end = first + int(seconds * 1e9)
while True:
    now = time.monotonic_ns()
    if now >= end:
        break
    d = meterkit.allow("api_calls", account="acme")
    assert not d.fallback, d
    allowed += d.allowed
    last = time.monotonic_ns()
print(allowed, first, last)
"""


def start_hammers(n: int, *args: str) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen([sys.executable, "-c", HAMMER, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for _ in range(n)
    ]


def results(procs: list[subprocess.Popen[str]]) -> tuple[int, int, int]:
    """(total allowed, earliest first ns, latest last ns) of finished hammers."""
    total, first, last = 0, None, None
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        allowed, began, ended = (int(x) for x in out.split())
        total += allowed
        first = began if first is None else min(first, began)
        last = ended if last is None else max(last, ended)
    assert first is not None and last is not None
    return total, first, last
