"""``meterkit reconcile --html``: a self-contained page people would rather look at.

Totals per meter and account, the discrepancies, who corrected what, when and why, and per
meter a chart of delivered usage per hour and account, with sudden drops (churn risk) and
spikes (upsell signal) marked.
No scripts, no external assets: inline CSS and SVG, so it opens anywhere, offline.
"""

from __future__ import annotations

import html
import statistics
from collections import defaultdict
from typing import Any

from .reconcile import Report

PALETTE = ["#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2", "#dc2626", "#4b5563"]


def signals(
    series: list[tuple[str, int]], window: int = 3, drop: float = 0.5, spike: float = 2.0
) -> list[tuple[str, str]]:
    """(hour, "drop" | "spike") where a point leaves its trailing median by the given factors.

    The median, not the mean: the hour after a one-off spike is back to normal, not a drop.
    """
    found = []
    for i in range(window, len(series)):
        baseline = statistics.median(v for _, v in series[i - window : i])
        if baseline <= 0:
            continue
        value = series[i][1]
        if value <= baseline * drop:
            found.append((series[i][0], "drop"))
        elif value >= baseline * spike:
            found.append((series[i][0], "spike"))
    return found


def _chart(meter: str, per_account: dict[str, dict[str, int]]) -> str:
    hours = sorted({h for series in per_account.values() for h in series})
    if not hours:
        return ""
    width, height, left, bottom, top = 860, 260, 56, 40, 16
    peak = max((v for s in per_account.values() for v in s.values()), default=1) or 1
    step = (width - left - 16) / max(len(hours) - 1, 1)

    def x(i: int) -> float:
        return left + i * step

    def y(v: float) -> float:
        return top + (height - top - bottom) * (1 - v / peak)

    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="hourly usage of {html.escape(meter)}">']
    for frac in (0, 0.5, 1):
        gy = y(peak * frac)
        parts.append(f'<line x1="{left}" x2="{width - 16}" y1="{gy:.1f}" y2="{gy:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 8}" y="{gy + 4:.1f}" class="axis" text-anchor="end">{peak * frac:,.0f}</text>')
    for i in sorted({0, len(hours) - 1, len(hours) // 2}):
        anchor = "start" if i == 0 else "end" if i == len(hours) - 1 else "middle"
        label = html.escape(hours[i][:13].replace("T", " "))
        parts.append(f'<text x="{x(i):.1f}" y="{height - 16}" class="axis" text-anchor="{anchor}">{label}h</text>')
    legend = []
    for n, (account, series) in enumerate(sorted(per_account.items())):
        color = PALETTE[n % len(PALETTE)]
        points = [(h, series.get(h, 0)) for h in hours]
        path = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, (_, v) in enumerate(points))
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        if len(points) <= 48:  # dots while they stay readable; a single hour shows as a dot
            parts.extend(
                f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}"/>' for i, (_, v) in enumerate(points)
            )
        for hour, kind in signals(points):
            i = hours.index(hour)
            v = series.get(hour, 0)
            label = "sudden drop: churn risk" if kind == "drop" else "spike: upsell signal"
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="6" class="{kind}"><title>{html.escape(account)} {hour}: {label}</title></circle>'
            )
        legend.append(f'<span class="key"><i style="background:{color}"></i>{html.escape(account)}</span>')
    parts.append("</svg>")
    return f'<figure><figcaption>{html.escape(meter)}: delivered measurements per hour</figcaption>{"".join(parts)}<div class="legend">{"".join(legend)}</div></figure>'


def _uids(uids: list[dict[str, str]], shown: int = 10) -> str:
    """The first named measurements of a difference, each with what differs."""
    if not uids:
        return ""
    items = "".join(f"<li><code>{html.escape(u['uid'])}</code> {html.escape(u['detail'])}</li>" for u in uids[:shown])
    more = f"<li>... and {len(uids) - shown:,} more (reconcile --json lists them all)</li>" if len(uids) > shown else ""
    return f'<ul class="uids">{items}{more}</ul>'


def _corrections(report: Report) -> str:
    """One row per correction in the period: who, when, why, what, and whether it arrived."""
    if not report.corrections:
        return ""
    rows = []
    for c in report.corrections:
        what = f"{c.action} of {len(c.of):,} measurement(s)" + (f" (backfill batch {c.batch})" if c.batch else "")
        where = ", ".join(f"{w['meter']}/{w['account']}: {w['count']:,}" for w in c.where())
        state = f"{c.status}: {len(c.delivered):,} of {len(c.uids):,}" + (f" ({where})" if where else "")
        missing = [{"uid": u, "detail": "not delivered"} for u in c.undelivered]
        rows.append(
            f'<tr class="{"explained" if c.status == "delivered" else "unexplained"}">'
            f"<td>{html.escape(c.made_at)}</td><td>{html.escape(c.by)}</td><td>{html.escape(what)}</td>"
            f"<td>{html.escape(c.reason)}</td><td>{html.escape(state)}{_uids(missing)}</td></tr>"
        )
    return (
        "<h2>Corrections</h2>\n<table><thead><tr><th>when</th><th>by</th><th>what</th><th>why</th>"
        f"<th>delivered</th></tr></thead>\n<tbody>{''.join(rows)}</tbody></table>"
    )


def render(report: Report, title: str = "meterkit reconciliation") -> str:
    data: dict[str, Any] = report.as_dict()
    unexplained = report.unexplained
    if report.empty:
        banner = ("empty", "Nothing was recorded, delivered or stored in this period: there is nothing to reconcile.")
    elif unexplained:
        banner = ("bad", f"{len(unexplained)} unexplained difference(s): see below.")
    else:
        banner = (
            "good",
            "Reconciled: every measurement recorded is accounted for, and the backend holds exactly what was delivered.",
        )
    rows = []
    for r in data["rows"]:
        lost = ", ".join(f"{k}: {v}" for k, v in sorted(r["sdk_lost"].items())) or "0"
        ok = r["delivered"] - r["resent"] == r["backend"]
        rows.append(
            f"<tr><td>{html.escape(r['meter'])}</td><td>{html.escape(r['account'])}</td><td>{r['recorded']:,}</td>"
            f"<td>{html.escape(lost)}</td><td>{r['dead_lettered']:,}</td><td>{r['delivered']:,}</td>"
            f'<td class="{"" if ok else "off"}">{r["backend"]:,}</td></tr>'
        )
    diffs = [
        f'<tr class="{"explained" if d.explained else "unexplained"}"><td>{html.escape(d.kind)}</td><td>{html.escape(d.meter)}</td>'
        f"<td>{html.escape(d.account)}</td><td>{d.count:,}</td><td>{html.escape(d.detail)}{_uids(d.uids)}</td></tr>"
        for d in report.differences
    ]
    per_meter: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    for r in report.rows:
        per_meter[r.meter][r.account] = dict(r.hourly)
    charts = "".join(_chart(m, accounts) for m, accounts in sorted(per_meter.items()))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 32px auto; max-width: 920px; color: #111827; }}
h1 {{ font-size: 24px; margin-bottom: 4px; }} .period {{ color: #4b5563; margin-top: 0; }}
.banner {{ padding: 12px 16px; border-radius: 8px; font-weight: 600; margin: 16px 0; }}
.good {{ background: #dcfce7; color: #166534; }} .bad {{ background: #fee2e2; color: #991b1b; }} .empty {{ background: #f3f4f6; color: #374151; }}
table {{ border-collapse: collapse; width: 100%; margin: 8px 0 24px; }}
th, td {{ text-align: left; padding: 6px 10px; border-bottom: 1px solid #e5e7eb; }} th {{ background: #f9fafb; font-weight: 600; }}
td:nth-child(n+3) {{ font-variant-numeric: tabular-nums; }} td.off {{ color: #b91c1c; font-weight: 700; }}
tr.unexplained td {{ color: #991b1b; }} tr.explained td {{ color: #374151; }}
figure {{ margin: 16px 0 32px; }} figcaption {{ font-weight: 600; margin-bottom: 6px; }}
svg {{ width: 100%; height: auto; background: #fff; }} .grid {{ stroke: #e5e7eb; }} .axis {{ font-size: 11px; fill: #6b7280; }}
.drop {{ fill: none; stroke: #dc2626; stroke-width: 3; }} .spike {{ fill: none; stroke: #16a34a; stroke-width: 3; }}
.legend {{ display: flex; gap: 16px; flex-wrap: wrap; font-size: 13px; }} .key i {{ display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px; vertical-align: -1px; }}
.signals {{ font-size: 13px; color: #4b5563; }} ul.uids {{ margin: 4px 0 0; padding-left: 18px; font-size: 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="period">{html.escape(report.start)} to {html.escape(report.end)} · {report.journal_entries:,} journal entries verified</p>
<div class="banner {banner[0]}">{html.escape(banner[1])}</div>
{f"<ul>{notes}</ul>" if notes else ""}
<h2>Totals per meter and account</h2>
<table><thead><tr><th>meter</th><th>account</th><th>recorded</th><th>lost in SDK</th><th>dead-lettered</th><th>delivered</th><th>in backend</th></tr></thead>
<tbody>{"".join(rows) or '<tr><td colspan="7">no usage</td></tr>'}</tbody></table>
<h2>Discrepancies</h2>
<table><thead><tr><th>kind</th><th>meter</th><th>account</th><th>count</th><th>detail</th></tr></thead>
<tbody>{"".join(diffs) or '<tr><td colspan="5">none</td></tr>'}</tbody></table>
{_corrections(report)}
<h2>Usage over time</h2>
<p class="signals">Circles mark hours that left the trailing three-hour median: <span style="color:#dc2626">red</span> a sudden drop (churn risk), <span style="color:#16a34a">green</span> a spike (upsell signal).</p>
{charts or "<p>No deliveries in this period.</p>"}
</body></html>
"""
