"""The transparency report: what meterkit collects, why, how it is protected, how long it
is kept and where it goes, for a data-protection officer (``meterkit privacy report``).

It is made from the two files that decide all of it: the catalog (every meter and field,
its category, its ``privacy`` and the meter's ``pii`` policy, and the ``description``
each gives as its purpose) and the agent's configuration (the exporters of the pipeline
that carries the measurements). Only what is safe to show is read from the configuration:
each exporter's kind, name and the host it sends to (a URL's user information, tokens,
headers and every other setting are never read into the report). A page is self-contained
(inline CSS, no script, no external asset), so it can be mailed or archived as it is;
every value is HTML-escaped.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meterkit import Catalog, load_catalog

from ..config import AgentConfig

_PROTECTION = {
    "pseudonymize": "pseudonymized: a keyed HMAC-SHA256 (key id prefix), applied before it is written anywhere",
    "drop": "dropped in the application: it never leaves the process",
    "keep": "kept as given",
}


@dataclass(frozen=True)
class Retention:
    """How long things are kept (``meterkit privacy retain``); None: until erased."""

    per_person_days: int | None = None
    billing_years: int | None = None

    def person(self) -> str:
        if self.per_person_days is None:
            return "kept until erased (no retention pass configured)"
        return f"{self.per_person_days} days (aged out by whole calendar months: at most a month longer)"

    def totals(self) -> str:
        if self.billing_years is None:
            return "kept (no billing retention configured)"
        return f"{self.billing_years} years"


@dataclass
class FieldRow:
    meter: str
    code: str
    name: str
    category: str
    purpose: str
    protection: str
    retention: str
    destinations: list[str] = field(default_factory=list)


@dataclass
class MeterRow:
    code: str
    name: str
    purpose: str
    pii: str
    fields: list[FieldRow] = field(default_factory=list)


def load_described(path: Path) -> tuple[Catalog, dict[tuple[str, str], str]]:
    """The catalog and each ``description`` it gives, by (meter, field code; "" for the
    meter)."""
    catalog = load_catalog(path)
    described: dict[tuple[str, str], str] = {}
    for meter in catalog.meters.values():
        if meter.description:
            described[(meter.code, "")] = meter.description
        for f in (*meter.data_fields, *meter.derived_fields):
            if f.description:
                described[(meter.code, f.code)] = f.description
    return catalog, described


def destinations(config: AgentConfig) -> list[str]:
    """Each exporter of the pipeline, as ``kind name: where``, with nothing secret."""
    out = []
    for cid in config.pipeline.exporters:
        cfg = config.exporters.get(cid)
        kind = cid.split("/", 1)[0]
        out.append(f"{cid}: {_where(kind, cfg)}")
    return out


def _where(kind: str, cfg: Any) -> str:
    if kind == "ledger":
        return "the embedded meterkit ledger (a local database)"
    if kind == "file":
        return "a local file"
    url = getattr(cfg, "base_url", None) or getattr(cfg, "url", None)
    defaults = {"m3ter": "m3ter (ingest.m3ter.com)", "stripe": "Stripe (api.stripe.com)"}
    if not isinstance(url, str) or not url:
        return defaults.get(kind, kind)
    try:
        host = urlsplit(url).hostname or "?"
    except ValueError:
        host = "?"
    return f"{kind} at {host}"


def rows(
    catalog: Catalog, described: dict[tuple[str, str], str], sent_to: list[str], retention: Retention
) -> list[MeterRow]:
    """One row per meter, one per field, in catalog order."""
    meters = []
    for meter in catalog.meters.values():
        pii = meter.pii or "redact"
        row = MeterRow(meter.code, meter.name, described.get((meter.code, ""), "(no description given)"), pii)
        for f in (*meter.data_fields, *meter.derived_fields):
            category = f.category.name
            numeric = f.category.numeric
            privacy = getattr(f, "privacy", None)
            if numeric:
                protection, kept = "a number (account-level usage)", retention.totals()
            else:
                protection = _PROTECTION.get(privacy or "keep", "kept as given")
                if privacy is None:
                    protection += " (no privacy: said)" if category == "WHO" else ""
                protection += f"; values that look like personal data: {pii}"
                person = category == "WHO" or privacy == "pseudonymize"
                kept = retention.person() if person else retention.totals()
            calculation = getattr(f, "calculation", "")
            purpose = described.get((meter.code, f.code)) or (
                f"derived: {calculation}" if calculation else "(no description given)"
            )
            row.fields.append(
                FieldRow(
                    meter.code,
                    f.code,
                    f.name,
                    category,
                    purpose,
                    protection,
                    kept if privacy != "drop" else "never stored",
                    [] if privacy == "drop" else list(sent_to),
                )
            )
        meters.append(row)
    return meters


_CSS = (
    "body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;width:100%;"
    "margin-bottom:2em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
    "th{background:#f2f2f2}h2{margin-top:1.6em}.muted{color:#666}"
)


def render_html(meters: list[MeterRow], sent_to: list[str], retention: Retention) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>meterkit transparency report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>What meterkit collects, why, how it is protected, and for how long</h1>",
        "<p>Per-person detail: " + e(retention.person()) + ". Account totals and bills: " + e(retention.totals()),
        ". A person's values can be erased at any time (<code>meterkit privacy erase</code>); totals and bills",
        " stay as they were.</p><h2>Destinations</h2><ul>",
        *(f"<li>{e(d)}</li>" for d in sent_to or ["(none)"]),
        "</ul>",
    ]
    for m in meters:
        out.append(f"<h2>Meter {e(m.code)} <span class='muted'>({e(m.name)})</span></h2>")
        out.append(f"<p>Purpose: {e(m.purpose)}. Personal-data guard for its text fields: {e(m.pii)}.</p>")
        out.append(
            "<table><tr><th>field</th><th>category</th><th>purpose</th><th>protection</th><th>retention</th>"
            "<th>sent to</th></tr>"
        )
        for f in m.fields:
            cells = [f"{f.code} ({f.name})", f.category, f.purpose, f.protection, f.retention]
            sent = "<br>".join(e(d) for d in f.destinations) or "nowhere"
            out.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + f"<td>{sent}</td></tr>")
        out.append("</table>")
    out.append("</body></html>\n")
    return "".join(out)


def render_markdown(meters: list[MeterRow], sent_to: list[str], retention: Retention) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = [
        "# What meterkit collects, why, how it is protected, and for how long",
        "",
        f"Per-person detail: {retention.person()}. Account totals and bills: {retention.totals()}.",
        "",
        "## Destinations",
        "",
        *(f"- {d}" for d in sent_to or ["(none)"]),
    ]
    for m in meters:
        out += ["", f"## Meter {m.code} ({m.name})", "", f"Purpose: {m.purpose}. Personal-data guard: {m.pii}.", ""]
        out += ["| field | category | purpose | protection | retention | sent to |", "|---|---|---|---|---|---|"]
        for f in m.fields:
            sent = "; ".join(f.destinations) or "nowhere"
            values = [f"{f.code} ({f.name})", f.category, f.purpose, f.protection, f.retention, sent]
            out.append("| " + " | ".join(cell(v) for v in values) + " |")
    return "\n".join(out) + "\n"
