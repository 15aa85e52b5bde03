"""What ``make bench`` prints: the peer table, meterkit's own figures, the other sections and
the targets, each latest figure followed in brackets by its range over the comparable runs
kept in bench/results.json (when there are two or more)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from history import Ranges
from targets import judge

PEER_COLUMNS = ["peer", "events", "hot path wall", "process CPU", "delivered/s", "lost in the burst"]


def number(value: float) -> str:
    """Three significant figures or so, thousands separated: 0.0123, 1.23, 12.3, 1,234."""
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 0.1 or size == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def with_range(value: float, ranges: Ranges, path: tuple[str, ...], unit: str = "") -> str:
    shown = number(value) + unit
    seen = ranges.get(*path)
    if seen is not None and seen[2] >= 2 and seen[0] != seen[1]:
        shown += f" [{number(seen[0])}–{number(seen[1])}]"
    return shown


def _peer_row(key: str, entry: dict[str, Any], ranges: Ranges) -> list[str]:
    cost = entry.get("cost", {})
    if "error" in cost:
        return [entry["label"], f"not available: {cost['error'][:100]}"]
    base = ("peers", key, "cost")
    hot = with_range(cost["hot_wall_us_per_event"], ranges, (*base, "hot_wall_us_per_event"), " µs")
    cpu = with_range(cost["process_cpu_us_per_event"], ranges, (*base, "process_cpu_us_per_event"), " µs")
    if key == "otel_counter":  # a sum, not events: nothing per second, nothing to lose one by one
        rate = "— (a sum)"
        lost = f"— (sum delivered {cost['delivered']:,} of {cost['sent']:,})"
    else:
        rate = with_range(cost["delivered_per_s"], ranges, (*base, "delivered_per_s"))
        run = "burst" if "burst" in entry else "cost"
        burst = entry[run]
        if "error" in burst:
            lost = f"not available: {burst['error'][:60]}"
        else:
            pct = with_range(burst["lost_pct"], ranges, ("peers", key, run, "lost_pct"), "%")
            lost = f"{burst['lost']:,} of {burst['sent']:,} ({pct})"
    return [entry["label"], f"{cost['sent']:,}", hot, cpu, rate, lost]


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    full = [r for r in rows if len(r) == len(header)]
    widths = [max(len(r[i]) for r in [header, *full]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        if len(row) == len(header):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        else:
            lines.append(f"{row[0].ljust(widths[0])}  {row[1]}")
    return lines


def peers_section(figures: dict[str, Any], ranges: Ranges, quick: bool) -> list[str]:
    peers = figures.get("peers")
    if not isinstance(peers, dict) or "not_available" in peers:
        reason = peers.get("not_available") if isinstance(peers, dict) else "no figures"
        return ["meterkit beside its peers: not available: " + str(reason)]
    if not peers:
        return ["meterkit beside its peers: not run (BENCH_PEERS)"]
    rows = [_peer_row(key, entry, ranges) for key, entry in peers.items()]
    lines = ["meterkit beside its peers (per event; each client in a process of its own, delivering to 127.0.0.1)"]
    lines += table(rows, PEER_COLUMNS)
    lines += [
        "",
        "  hot path wall: the calling thread's wall time per event in a tight loop, background threads running;",
        "  process CPU: all the client process's threads, from the loop's start until flush/shutdown returned;",
        "  delivered/s: events the receiver stored, over the time from the loop's start to the last one stored;",
        "  the two columns before it come from a run whose client queue holds every event (nothing may drop);",
        "  lost: a burst as fast as possible at the client's default settings, then flush/shutdown.",
        "  How each was used:",
    ]
    for entry in peers.values():
        lines.append(f"    {entry['label']}: {entry['how']}")
    for entry in peers.values():
        sent = entry.get("cost", {}).get("requests")
        if sent:
            lines.append(
                f"  {entry['label']}: {sent.get('submit', 0):,} submit requests and"
                f" {sent.get('token', 0):,} token exchanges at /oauth/token for {entry['cost']['sent']:,} events"
            )
    mk = peers.get("meterkit", {})
    for run in ("cost", "burst"):
        r = mk.get(run, {})
        if "agent_cpu_us_per_event" in r:
            lines.append(
                f"  meterkit {run} run, beside the application: agent {number(r['agent_cpu_us_per_event'])} µs,"
                f" ledger {number(r['ledger_cpu_us_per_event'])} µs of CPU per measurement;"
                f" the application's calling thread {number(r['caller_cpu_us_per_event'])} µs"
            )
    if quick:
        lines.append("  (BENCH_QUICK: smaller runs)")
    return lines


def sdk_section(figures: dict[str, Any], ranges: Ranges) -> list[str]:
    sdk = figures.get("meterkit_sdk")
    if sdk is None:
        return ["meterkit's own: not run (BENCH_PEERS)"]
    if not isinstance(sdk, dict) or "error" in sdk or "not_available" in sdk:
        reason = (sdk or {}).get("error") or (sdk or {}).get("not_available") if isinstance(sdk, dict) else None
        return [f"meterkit's own: not available: {reason or 'no figures'}"]
    loop, d, b = sdk["loop"], sdk["decorator"], sdk["burst"]
    return [
        "meterkit's own (the application side only, spooled, no agent)",
        f"  record() in a tight loop, flusher running: "
        f"{with_range(loop['wall_us_median'], ranges, ('meterkit_sdk', 'loop', 'wall_us_median'), ' µs')} wall,"
        f" calling thread {number(loop['caller_cpu_us_median'])} µs CPU,"
        f" process {number(loop['process_cpu_us_median'])} µs CPU until flushed"
        f" (medians of 3 x {loop['n']:,}; best wall {number(loop['wall_us_best'])} µs)",
        f"  @meterkit.meter overhead vs a bare call: "
        f"{with_range(d['overhead_us'], ranges, ('meterkit_sdk', 'decorator', 'overhead_us'), ' µs')} wall"
        f" ({number(d['decorated_us'])} vs {number(d['bare_us'])} µs, best of 3 x {d['n']:,})",
        f"  burst of {b['n']:,} record() calls at default settings: recorded in "
        f"{with_range(b['recorded_s'], ranges, ('meterkit_sdk', 'burst', 'recorded_s'), ' s')},"
        f" spooled {b['spooled']:,} in {number(b['spooled_s'])} s, lost {b['lost']:,};"
        f" queue peak {b['queue_peak']:,} of {b['queue_capacity']:,};"
        f" slowest 1,000 calls {number(b['slowest_1000_calls_ms'])} ms;"
        f" process CPU {number(b['process_cpu_us_per_event'])} µs per event;"
        f" RSS +{number(b['rss_growth_mib'])} MiB (peak {number(b['peak_rss_mib'])} MiB)",
    ]


def _leaf(value: Any, ranges: Ranges, path: tuple[str, ...]) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        shown = f"{value:,}"
        seen = ranges.get(*path)
        if seen is not None and seen[2] >= 2 and seen[0] != seen[1]:
            shown += f" [{seen[0]:,.0f}–{seen[1]:,.0f}]"
        return shown
    return with_range(value, ranges, path)


def other_section(title: str, key: str, figures: dict[str, Any], ranges: Ranges) -> list[str]:
    """A section from a module this bench does not own: its figures as it returns them,
    nested as it nests them; records of the same kind side by side as a table."""
    found = figures.get(key)
    if not isinstance(found, dict):
        return [f"{title}: not available: no figures"]
    if "not_available" in found:
        return [f"{title}: not available: {found['not_available']}"]
    return [title, *_nested(found, (key,), "  ", ranges)]


def _flat(value: Any) -> bool:
    return isinstance(value, dict) and not any(isinstance(v, (dict, list)) for v in value.values())


def _records(value: Any) -> list[tuple[str, dict[str, Any]]] | None:
    """Two or more flat records (a list of them, or a dict of them by name), else None."""
    items = (
        list(value.items()) if isinstance(value, dict) else list(enumerate(value)) if isinstance(value, list) else []
    )
    if len(items) < 2 or not all(_flat(v) for _, v in items):
        return None
    return [(str(name), record) for name, record in items]


def _nested(value: dict[str, Any], path: tuple[str, ...], indent: str, ranges: Ranges) -> list[str]:
    lines: list[str] = []
    for name, inner in value.items():
        here = (*path, str(name))
        records = _records(inner)
        if records is not None:
            fields = list(dict.fromkeys(f for _, record in records for f in record))
            rows = [
                [label, *(_leaf(r[f], ranges, (*here, label, f)) if f in r else "—" for f in fields)]
                for label, r in records
            ]
            lines.append(f"{indent}{name}:")
            lines += [f"{indent}  {line}" for line in table(rows, ["", *fields])]
        elif isinstance(inner, dict):
            lines.append(f"{indent}{name}:")
            lines += _nested(inner, here, indent + "  ", ranges)
        elif isinstance(inner, list) and any(isinstance(v, (dict, list)) for v in inner):
            lines.append(f"{indent}{name}:")
            lines += _nested({str(i): v for i, v in enumerate(inner)}, here, indent + "  ", ranges)
        else:
            lines.append(f"{indent}{name}: {_leaf(inner, ranges, here)}")
    return lines


SECTIONS = [
    ("end to end: application threads → spool → agent → ledger", "end_to_end"),
    ("the ledger: ingest and usage queries at 1M and 5M measurements", "ledger"),
    ("PostgreSQL ingest", "postgres"),
    ("reconcile by measurement", "reconcile"),
]


def targets_section(figures: dict[str, Any]) -> list[str]:
    judged = judge(figures)
    width = max(len(text) for _, text, _ in judged)
    lines = ["targets (issues 11, 13 and 16), judged from this run's figures"]
    for number_, text, outcome in judged:
        verdict = outcome if isinstance(outcome, str) else f"{outcome[0]}  →  {'met' if outcome[1] else 'NOT MET'}"
        lines.append(f"  {number_}. {text.ljust(width)}  {verdict}")
    return lines


DECISION_COLUMNS = ["decision", "wall µs, median (runs)", "process CPU µs, median (runs)", "CPU x meterkit"]


def decisions_section(figures: dict[str, Any], ranges: Ranges) -> list[str]:
    """bench/decisions.py: meterkit.allow() beside `limits` and pyrate-limiter, every
    decision allowed; per decision, the median and range of this run's runs, then in
    brackets the range of the median over the runs kept."""
    found = figures.get("decisions")
    title = "limit decisions: meterkit.allow() beside limits and pyrate-limiter (per decision)"
    if not isinstance(found, dict) or "not_available" in found:
        reason = found.get("not_available") if isinstance(found, dict) else "no figures"
        return [f"{title}: not available: {reason}"]
    rows = []
    for name, r in found["rows"].items():
        path = ("decisions", "rows", name)
        wall = with_range(r["wall_us"], ranges, (*path, "wall_us"))
        cpu = with_range(r["cpu_us"], ranges, (*path, "cpu_us"))
        ratio = with_range(r["cpu_x_meterkit"], ranges, (*path, "cpu_x_meterkit"), "x") if "cpu_x_meterkit" in r else ""
        rows.append(
            [
                name,
                f"{wall} ({number(r['wall_us_min'])}–{number(r['wall_us_max'])})",
                f"{cpu} ({number(r['cpu_us_min'])}–{number(r['cpu_us_max'])})",
                ratio,
            ]
        )
    lines = [title, *(f"  {line}" for line in table(rows, DECISION_COLUMNS))]
    trip = found.get("redis")
    if isinstance(trip, dict):
        x = with_range(trip["decision_x_ping"], ranges, ("decisions", "redis", "decision_x_ping"), "x")
        lines.append(
            f"  a global decision: {trip['round_trips_per_decision']:g} round trip(s) each (requests sent);"
            f" {number(trip['decision_wall_us'])} µs wall = {x} a bare PING's {number(trip['ping_wall_us'])} µs"
            f" from the same kind of client ({trip['decision_x_ping_min']:.2f}–{trip['decision_x_ping_max']:.2f}x"
            " over the runs)"
        )
    elif trip is not None:
        lines.append(f"  {trip}")
    lines += [
        f"  {found['runs']} runs of {found['decisions_per_run']:,} decisions (Redis rows: a twentieth), one account,"
        " a limit that allows every one; process CPU counts every thread;",
        "  CPU x meterkit: a peer's CPU over meterkit's doing the same kind of work (memory: process; Redis: global).",
    ]
    return lines


def _spread(found: dict[str, Any], ranges: Ranges, path: tuple[str, ...]) -> str:
    """A median with this run's min–max, then the median's range over the runs kept."""
    median = with_range(found["median"], ranges, (*path, "median"), " s")
    return f"{median} ({number(found['min'])}–{number(found['max'])})"


def redundancy_section(figures: dict[str, Any], ranges: Ranges) -> list[str]:
    """bench/redundancy.py: a second destination's cost, a standby's take-over, and one
    destination's latency while another is down."""
    found = figures.get("redundancy")
    title = "redundancy: a second destination, a standby, a destination down (issue 16)"
    if not isinstance(found, dict) or "not_available" in found:
        reason = found.get("not_available") if isinstance(found, dict) else "no figures"
        return [f"{title}: not available: {reason}"]
    sd, tk, lt = found["second_destination"], found["takeover"], found["latency_with_other_down"]
    path = ("redundancy", "second_destination")
    lines = [title, f"  agent process CPU per measurement ({sd['n']:,} spooled, {sd['runs']} runs each, medians):"]
    for name, r in sd["rows"].items():
        cpu = with_range(r["agent_cpu_us_median"], ranges, (*path, "rows", name, "agent_cpu_us_median"), " µs")
        lines.append(
            f"    {name}: {cpu} ({number(r['agent_cpu_us_min'])}–{number(r['agent_cpu_us_max'])}),"
            f" delivered in {number(r['wall_s_median'])} s"
        )
    lines += [
        f"    two / one: {with_range(sd['two_x_one'], ranges, (*path, 'two_x_one'), 'x')};"
        f" the second costs {with_range(sd['extra_cpu_us'], ranges, (*path, 'extra_cpu_us'), ' µs')}"
        f" (pairs {number(sd['extra_cpu_us_min'])}–{number(sd['extra_cpu_us_max'])})"
        f" = {with_range(sd['extra_x_serialisation'], ranges, (*path, 'extra_x_serialisation'), 'x')}"
        f" the serialisation one destination needs"
        f" ({with_range(sd['serialisation_us'], ranges, (*path, 'serialisation_us'), ' µs')}: orjson with sorted"
        " keys, the request body, gzip level 1; one thread, measured alone)",
        f"    what the second still does on its own, each measured alone: its commit (journal entry,"
        f" checkpoint) {with_range(sd.get('own_commit_us'), ranges, (*path, 'own_commit_us'), ' µs')},"
        f" its HTTP requests (the m3ter exporter, bodies shared, 1,000 a request)"
        f" {with_range(sd.get('own_http_us'), ranges, (*path, 'own_http_us'), ' µs')}",
        f"    every sink exact (uids and sum): {sd['exact']}; sent again: {sd['resent']:,}",
    ]
    times, tpath = tk["times"], ("redundancy", "takeover", "times")
    lines.append(f"  take-over by a standby ({tk['rounds_each']} rounds each, {tk['rate_per_s']:,}/s being recorded):")
    for how in ("sigkill", "sigstop"):
        lease, first = times[f"{how}_lease_s"], times[f"{how}_first_delivery_s"]
        lines.append(
            f"    {how.upper()} → next lease epoch {_spread(lease, ranges, (*tpath, f'{how}_lease_s'))},"
            f" → its first delivery {_spread(first, ranges, (*tpath, f'{how}_first_delivery_s'))}"
        )
    lines.append(
        f"    paused leaders woken after {number(tk['stall_s'])} s because the new leader waited for their commit lock:"
        f" {times['sigstop_rounds_stalled_on_commit_lock']}; recorded {tk['recorded']:,}, lost {tk['lost']:,},"
        f" sent again {tk['resent']:,} (one uid counted once), sum exact: {tk['sum_matches']}"
    )
    rows = [
        [
            label,
            f"{r['p50_s']:.3f} s",
            f"{r['p99_s']:.3f} s",
            f"{r['max_s']:.3f} s",
            f"{r['a_lost']:,}",
            f"{r.get('b_requests', '—')}",
        ]
        for label, r in lt["rows"].items()
    ]
    lpath = ("redundancy", "latency_with_other_down")
    lines.append(
        f"  destination A's latency, record → arrival at its sink ({lt['rate_per_s']:,}/s for {lt['seconds']} s;"
        f" beside B down, {lt.get('outage_seconds', lt['seconds'])} s):"
    )
    lines += [f"    {line}" for line in table(rows, ["", "p50", "p99", "max", "A lost", "B requests"])]
    lines.append(
        f"    p99 with B down / A alone: {with_range(lt['p99_503_x_alone'], ranges, (*lpath, 'p99_503_x_alone'), 'x')};"
        f" / B healthy: {with_range(lt['p99_503_x_healthy'], ranges, (*lpath, 'p99_503_x_healthy'), 'x')}"
    )
    return lines


def render(run: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    ranges = Ranges(runs, run)
    figures = run["figures"]
    head = [
        f"meterkit bench — {run['date']}, commit {run['commit']}, {run['duration_s']:.0f} s"
        + (" (BENCH_QUICK)" if run["quick"] else ""),
        f"machine: {run['machine']}",
        (
            f"[a–b]: the range over the {ranges.runs} runs kept on this machine"
            + (" (quick runs only)" if run["quick"] else "")
            + " in bench/results.json, this one included"
            if ranges.runs >= 2
            else "no earlier run on this machine in bench/results.json: no ranges yet"
        ),
    ]
    parts: list[Callable[[], list[str]]] = [
        lambda: head,
        lambda: peers_section(figures, ranges, run["quick"]),
        lambda: sdk_section(figures, ranges),
        *(partial(other_section, title, key, figures, ranges) for title, key in SECTIONS),
        lambda: decisions_section(figures, ranges),
        lambda: redundancy_section(figures, ranges),
        lambda: targets_section(figures),
    ]
    return "\n\n".join("\n".join(_printed(part)) for part in parts)


def _printed(part: Callable[[], list[str]]) -> list[str]:
    """A part that cannot be printed says why; the figures are in results.json regardless."""
    try:
        return part()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return [f"(this part could not be printed: {type(exc).__name__}: {exc})"]
