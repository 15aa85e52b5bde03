"""The issue's targets, each judged from the figures of the run that prints it: nothing here
knows an outcome in advance. A target whose figure is missing (a section not available, a
figure its module does not return) says so instead of passing or failing.

The peer table's and meterkit's own figures are read by their exact names (this bench makes
them). The other sections' figures come from modules with owners of their own, so they are
found by a pattern over the figure's path (``section/key/subkey``), which names what
is looked for and survives a module nesting its figures differently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

Figures = dict[str, Any]
#: (what was found, met) or the reason there is no figure
Outcome = tuple[str, bool] | str
MB_PER_MIB = 1.048576


def walk(value: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Every leaf with its path, ``a/b/c``, lowercased."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from walk(inner, (*prefix, str(key)))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from walk(inner, (*prefix, str(index)))
    else:
        yield "/".join(prefix).lower(), value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def at(figures: Figures, *path: str) -> Any:
    value: Any = figures
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def find(figures: Figures, section: str, pattern: str, numeric: bool = True) -> list[tuple[str, Any]]:
    """Leaves of ``section`` whose path matches ``pattern`` (a regular expression)."""
    rx = re.compile(pattern)
    found = [(p, v) for p, v in walk(figures.get(section) or {}) if rx.search(p)]
    return [(p, v) for p, v in found if _number(v)] if numeric else found


def _missing(figures: Figures, section: str) -> str:
    reason = at(figures, section, "not_available")
    return f"no figure: {section} not available" if reason else f"no figure in {section}"


def _at_most(value: float | None, limit: float, unit: str, why: str) -> Outcome:
    return why if value is None else (f"{value:,.2f} {unit}", value <= limit)


def _first(figures: Figures, section: str, pattern: str) -> float | None:
    found = find(figures, section, pattern)
    return float(found[0][1]) if found else None


def sdk_cpu(f: Figures) -> Outcome:
    return _at_most(at(f, "peers", "meterkit", "cost", "process_cpu_us_per_event"), 1.5, "µs", _missing(f, "peers"))


def sdk_vs_counter(f: Figures) -> Outcome:
    mk = at(f, "peers", "meterkit", "cost", "process_cpu_us_per_event")
    counter = at(f, "peers", "otel_counter", "cost", "process_cpu_us_per_event")
    if not (_number(mk) and _number(counter)) or mk <= 0:
        return _missing(f, "peers")
    return f"{counter / mk:.2f}x ({counter:.2f} vs {mk:.2f} µs)", counter / mk >= 3.5


def sdk_wall(f: Figures) -> Outcome:
    """From meterkit's own tight loop (the flusher running, no agent on the cores), the
    median of three rounds; the peer table's figure has the delivery pipeline beside it."""
    value = at(f, "meterkit_sdk", "loop", "wall_us_median")
    return _at_most(value, 1.5, "µs (median of 3)", _missing(f, "meterkit_sdk"))


def decorator(f: Figures) -> Outcome:
    return _at_most(at(f, "meterkit_sdk", "decorator", "overhead_us"), 2.0, "µs", _missing(f, "meterkit_sdk"))


#: "Memory bounded": the burst grew the process by less than this (a million queued events
#: would take several hundred MiB).
BOUNDED_MIB = 100.0


def burst(f: Figures) -> Outcome:
    b = at(f, "meterkit_sdk", "burst")
    if not isinstance(b, dict) or "n" not in b:
        return _missing(f, "meterkit_sdk")
    checks = {
        f"all {b['n']:,} spooled": b["spooled"] == b["n"],
        "none lost": b["lost"] == 0,
        # record() waits only on a full queue; read every 1,000 calls, so 1,000 below is safe
        f"queue peak {b['queue_peak']:,} of {b['queue_capacity']:,}": (b["queue_peak"] + 1_000 < b["queue_capacity"]),
        f"RSS +{b['rss_growth_mib']:.0f} MiB (≤ {BOUNDED_MIB:.0f})": b["rss_growth_mib"] <= BOUNDED_MIB,
    }
    failed = [name for name, ok in checks.items() if not ok]
    shown = ", ".join(checks) if not failed else "not: " + "; ".join(failed)
    return shown + ("" if b["n"] >= 1_000_000 else f" (quick run: {b['n']:,} events)"), not failed


def _peer(f: Figures, key: str) -> float | None:
    value = at(f, "peers", "meterkit", "burst", key)
    return float(value) if _number(value) else None


def _source(choices: list[tuple[float | None, str]], limit: float, why: str) -> Outcome:
    """The first figure there is, with a note naming where it came from if not the first."""
    for value, note in choices:
        if value is not None:
            return f"{value:,.2f} µs{note}", value <= limit
    return why


def agent_cpu(f: Figures) -> Outcome:
    """The agent's CPU in the end-to-end run, else in the peer table's meterkit burst."""
    return _source(
        [
            (_first(f, "end_to_end", r"agent_cpu_us"), ""),
            (_peer(f, "agent_cpu_us_per_event"), " (peer table, meterkit burst)"),
        ],
        6.0,
        _missing(f, "end_to_end"),
    )


def ledger_cpu(f: Figures) -> Outcome:
    """The ledger process's CPU in the end-to-end run (HTTP, trusted batches); else the
    ledger section's store alone; else the peer table's meterkit burst."""
    return _source(
        [
            (_first(f, "end_to_end", r"ledger_cpu_us"), ""),
            (_first(f, "ledger", r"sqlite/ingest_cpu_us"), " (ledger section: the store alone, no HTTP)"),
            (_peer(f, "ledger_cpu_us_per_event"), " (peer table, meterkit burst)"),
        ],
        5.0,
        _missing(f, "end_to_end"),
    )


def e2e_rate(f: Figures) -> Outcome:
    value = _first(f, "end_to_end", r"throughput_per_s")
    return _missing(f, "end_to_end") if value is None else (f"{value:,.0f}/s", value >= 100_000)


def e2e_exact(f: Figures) -> Outcome:
    lost = _first(f, "end_to_end", r"(^|/)lost$")
    dup = _first(f, "end_to_end", r"(^|/)duplicated$")
    sums = [v for _, v in find(f, "end_to_end", r"sum_match", numeric=False)]
    if lost is None or dup is None or not sums:
        return _missing(f, "end_to_end")
    return f"lost {lost:.0f}, duplicated {dup:.0f}, sums exact: {all(sums)}", lost == 0 and dup == 0 and all(sums)


def e2e_p99(f: Figures) -> Outcome:
    value = _first(f, "end_to_end", r"p99")
    return _missing(f, "end_to_end") if value is None else (f"{value:.2f} s", value < 1.0)


def e2e_rss(f: Figures) -> Outcome:
    mib = _first(f, "end_to_end", r"agent.*rss.*mib")
    return _missing(f, "end_to_end") if mib is None else (f"{mib * MB_PER_MIB:.0f} MB", mib * MB_PER_MIB < 150)


AGGREGATIONS = r"(count|sum|min|max|mean|latest|unique)"
FIVE_M = r"(5m|5_?000_?000)"


def _queries(f: Figures, database: str) -> Outcome:
    sections = ("ledger", "postgres") if database == "postgres" else ("ledger",)
    found: list[tuple[str, Any]] = []
    for section in sections:
        for path, value in find(f, section, FIVE_M):
            if re.search(AGGREGATIONS, path) and not re.search(r"(ingest|bytes|per_s|_us)", path):
                in_pg = section == "postgres" or "postg" in path or "/pg" in path
                if in_pg == (database == "postgres"):
                    found.append((path, value))
    skipped = at(f, "ledger", "postgresql")
    if not found and database == "postgres" and isinstance(skipped, str):
        return f"no figure: {skipped}"
    if not found:
        return _missing(f, sections[-1])
    worst_path, worst = max(found, key=lambda pv: float(pv[1]))
    return f"slowest {worst:.3f} s ({worst_path.rsplit('/', 2)[-2:][-1]}) of {len(found)}", worst <= 0.25


def queries_sqlite(f: Figures) -> Outcome:
    return _queries(f, "sqlite")


def queries_postgres(f: Figures) -> Outcome:
    return _queries(f, "postgres")


def storage(f: Figures) -> Outcome:
    """Every data set's bytes per measurement must be within the target, the smallest too."""
    found = [(p, float(v)) for p, v in find(f, "ledger", r"bytes_per_measurement") if "postg" not in p]
    if not found:
        return _missing(f, "ledger")
    shown = ", ".join(f"{v:.0f} B" + (f" ({p.split('/')[-2]})" if len(found) > 1 else "") for p, v in found)
    return shown, max(v for _, v in found) <= 120


def postgres_ingest(f: Figures) -> Outcome:
    rates = [float(v) for _, v in find(f, "postgres", r"per_s$")]
    if not rates:
        return _missing(f, "postgres")
    return f"{min(rates):,.0f}–{max(rates):,.0f}/s over {len(rates)} configurations", True


def reconcile_day(f: Figures) -> Outcome:
    value = at(f, "reconcile", "reconcile_s")
    return _at_most(
        value if _number(value) else _first(f, "reconcile", r"day.*_s$"), 2.0, "s", _missing(f, "reconcile")
    )


def reconcile_month(f: Figures) -> Outcome:
    """A month measured if the section measured one, else its estimate, said as such."""
    for pattern, note in ((r"month.*/reconcile_s$", ""), (r"month.*estimate.*_s$", " (estimated from one day)")):
        found = find(f, "reconcile", pattern)
        if found:
            return _at_most(float(found[0][1]), 30.0, "s" + note, "")
    return _missing(f, "reconcile")


def _decision_cpu(row: str, limit: float) -> Callable[[Figures], Outcome]:
    """A decision's process CPU (median of the runs) from the decisions section."""

    def check(f: Figures) -> Outcome:
        value = at(f, "decisions", "rows", row, "cpu_us")
        return _at_most(value if _number(value) else None, limit, "µs CPU (median)", _missing(f, "decisions"))

    return check


def redis_round_trip(f: Figures) -> Outcome:
    """Counted, not inferred from time: the requests the client sent per decision; the wall
    time beside a bare PING says what that round trip costs."""
    trip = at(f, "decisions", "redis")
    if isinstance(trip, str):
        return f"no figure: {trip}"
    if not isinstance(trip, dict) or not _number(trip.get("round_trips_per_decision")):
        return _missing(f, "decisions")
    trips = trip["round_trips_per_decision"]
    return (
        f"{trips:g} round trip(s) per decision; {trip['decision_x_ping']:.2f}x a bare PING"
        f" ({trip['decision_wall_us']:.0f} vs {trip['ping_wall_us']:.0f} µs wall)",
        trips == 1,
    )


def second_destination(f: Figures) -> Outcome:
    """The agent's extra CPU per measurement with a second destination (the median of two
    minus one, over pairs run back to back) against one destination's request encoding,
    measured alone."""
    extra = at(f, "redundancy", "second_destination", "extra_cpu_us")
    encode = at(f, "redundancy", "second_destination", "serialisation_us")
    if not (_number(extra) and _number(encode)):
        return _missing(f, "redundancy")
    return f"+{extra:.2f} µs CPU vs {encode:.2f} µs serialisation ({extra / encode:.1f}x)", extra <= encode


def takeover(f: Figures) -> Outcome:
    """The slowest first delivery by the new leader after SIGKILL or SIGSTOP of the old."""
    times = at(f, "redundancy", "takeover", "times")
    if not isinstance(times, dict):
        return _missing(f, "redundancy")
    worst = {how: at(times, f"{how}_first_delivery_s", "max") for how in ("sigkill", "sigstop")}
    if not all(_number(v) for v in worst.values()):
        return _missing(f, "redundancy")
    shown = ", ".join(f"{how.upper()} {v:.2f} s" for how, v in worst.items())
    return f"slowest first delivery: {shown}", max(worst.values()) <= 2.0


#: "Unaffected" on a machine whose figures vary by ±25%.
UNAFFECTED = 1.25


def other_down(f: Figures) -> Outcome:
    rows = at(f, "redundancy", "latency_with_other_down", "rows")
    p99 = {k: at(rows, k, "p99_s") for k in ("a_alone", "b_healthy", "b_503")} if isinstance(rows, dict) else {}
    if len(p99) < 3 or not all(_number(v) for v in p99.values()):
        return _missing(f, "redundancy")
    base = max(p99["a_alone"], p99["b_healthy"])
    return (
        f"p99 {p99['b_503']:.2f} s with B down vs {p99['a_alone']:.2f} s alone, {p99['b_healthy']:.2f} s B healthy",
        p99["b_503"] <= base * UNAFFECTED,
    )


TARGETS: list[tuple[str, str, Callable[[Figures], Outcome]]] = [
    ("1", "app: total process CPU per measurement, all threads ≤ 1.5 µs", sdk_cpu),
    ("1", "app: ≥ 3.5x cheaper than OTel counter.add, same run", sdk_vs_counter),
    ("1", "app: record() wall time, tight loop, flusher running ≤ 1.5 µs", sdk_wall),
    ("1", "app: @meter decorator overhead ≤ 2 µs wall", decorator),
    ("1", "app: 1,000,000-event burst not blocked, spooled, none lost, memory bounded", burst),
    ("2", "agent ≤ 6 µs CPU per measurement", agent_cpu),
    ("3", "ledger ≤ 5 µs CPU per measurement at ingest", ledger_cpu),
    ("4", "end to end ≥ 100,000 measurements/s", e2e_rate),
    ("4", "end to end: none lost, none duplicated, sums exact", e2e_exact),
    ("4", "end to end: p99 record → ack < 1 s at half rate", e2e_p99),
    ("4", "end to end: agent RSS < 150 MB", e2e_rss),
    ("5", "queries by account x day over 5M ≤ 0.25 s each, SQLite", queries_sqlite),
    ("5", "queries by account x day over 5M ≤ 0.25 s each, PostgreSQL", queries_postgres),
    ("5", "storage ≤ 120 bytes per measurement, SQLite", storage),
    ("6", "PostgreSQL ingest throughput measured", postgres_ingest),
    ("7", "reconcile one day of 1,000,000 ≤ 2 s", reconcile_day),
    ("7", "reconcile one month of 10,000,000 ≤ 30 s", reconcile_month),
    ("13", "limits: in-process rate decision ≤ 1.5 µs", _decision_cpu("meterkit process", 1.5)),
    ("13", "limits: host-shared rate decision ≤ 5 µs", _decision_cpu("meterkit host", 5.0)),
    ("13", "limits: cap decision ≤ 5 µs", _decision_cpu("meterkit capped", 5.0)),
    ("13", "limits: a Redis (global) decision is one round trip", redis_round_trip),
    ("16", "a second destination costs at most the serialisation it needs", second_destination),
    ("16", "a standby delivers within 2 s of the leader's death (SIGKILL) or pause (SIGSTOP)", takeover),
    ("16", "a destination down (503) leaves the other's p99 latency within 1.25x", other_down),
]


def judge(figures: Figures) -> list[tuple[str, str, Outcome]]:
    """Every target with its outcome; a check that cannot read its figure says why."""
    judged: list[tuple[str, str, Outcome]] = []
    for number, text, check in TARGETS:
        try:
            outcome = check(figures)
        except (KeyError, TypeError, ValueError) as exc:
            outcome = f"no figure: {type(exc).__name__}: {exc}"
        judged.append((number, text, outcome))
    return judged
