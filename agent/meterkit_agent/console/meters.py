"""The console's product view and privacy view, read from the ledger's rollups and catalog.

- :func:`meter_summary`: per meter, over whole hours ``[from, to)``: how many accounts used
  it, its count (corrections applied, as :mod:`.accounts` counts), each number field's
  exact sum across accounts, and per string field its most used values with their counts
  (``str_rollup``, which a correction rebuilds); a meter of the catalog with no usage in the
  period is listed with ``"unused": true``, so it stands out.
- :func:`privacy_report`: what the ledger's catalog says of each meter and field (category,
  purpose, ``privacy``: pseudonymize, drop or keep, and the meter's ``pii`` policy), and
  per field marked ``pseudonymize`` how many distinct values are stored, shown as the
  pseudonyms they are. The ledger knows what reaches it, not the agents' other
  destinations nor their retention settings; the report says so, and names
  ``meterkit privacy report`` (:mod:`..audit.transparency`), which knows them. (The console
  cannot import that module: the audit package reads the ledger, and the ledger serves the
  console, so it would be an import circle.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meterkit import Catalog

from ..instants import HOUR_MS
from .accounts import rollup_usage

if TYPE_CHECKING:
    from ..ledger.store import Ledger

#: the most values listed per string field (the rest are counted in ``other_values``)
TOP_VALUES = 12


def meter_summary(ledger: Ledger, org: str, lo_ms: int, hi_ms: int, catalog: Catalog | None) -> dict[str, Any]:
    m = ledger.mark
    span = [org, lo_ms // HOUR_MS, hi_ms // HOUR_MS]
    meters: dict[str, dict[str, Any]] = {}

    def entry(meter: str) -> dict[str, Any]:
        return meters.setdefault(meter, {"meter": meter, "accounts": 0, "count": 0, "sums": {}, "values": {}})

    conn = ledger.connection()
    try:
        cur = conn.cursor()
        scope = f"s.org = {m} AND {{t}}.hour >= {m} AND {{t}}.hour < {m}"
        for (meter,), usage in rollup_usage(ledger, cur, scope, span, "s.meter", "COUNT(DISTINCT s.account)"):
            entry(meter).update(accounts=int(usage.pop("extra", 0)), **usage)
        cur.execute(
            f"SELECT s.meter, r.code, r.value, SUM(r.count) AS n FROM series s JOIN str_rollup r ON r.series = s.id"  # noqa: S608
            f" WHERE {scope.format(t='r')} GROUP BY s.meter, r.code, r.value ORDER BY s.meter, r.code, n DESC, r.value",
            span,
        )
        for meter, code, value, n in cur.fetchall():
            field = entry(meter)["values"].setdefault(code, {"top": [], "other_values": 0})
            if len(field["top"]) < TOP_VALUES:
                field["top"].append({"value": value, "count": int(n)})
            else:
                field["other_values"] += 1
    finally:
        conn.close()
    known = list(catalog.meters) if catalog is not None else []
    for code in known:
        entry(code)
    for item in meters.values():
        item["unused"] = item["count"] == 0
        item["in_catalog"] = item["meter"] in known if catalog is not None else None
    return {"meters": sorted(meters.values(), key=lambda i: (i["unused"], i["meter"]))}


def privacy_report(ledger: Ledger, org: str, catalog: Catalog) -> dict[str, Any]:
    pseudonymized = [
        (meter.code, f.code)
        for meter in catalog.meters.values()
        for f in meter.data_fields
        if getattr(f, "privacy", None) == "pseudonymize"
    ]
    samples = _pseudonym_samples(ledger, org, pseudonymized)
    meters = []
    for meter in catalog.meters.values():
        fields = []
        for f in (*meter.data_fields, *meter.derived_fields):
            fields.append(
                {
                    "code": f.code,
                    "name": f.name,
                    "category": f.category.name,
                    "number": f.category.numeric,
                    "privacy": getattr(f, "privacy", None),
                    "purpose": getattr(f, "description", None),
                    "calculation": getattr(f, "calculation", None),
                    "stored": samples.get((meter.code, f.code)),
                }
            )
        meters.append(
            {
                "code": meter.code,
                "name": meter.name,
                "purpose": meter.description,
                "pii": meter.pii or "redact",
                "fields": fields,
            }
        )
    return {
        "meters": meters,
        "unknown_here": [
            "the agents' other destinations (m3ter, Stripe, files) and their retention settings:"
            " `meterkit privacy report --catalog meters.yaml --config agent.yaml` lists them",
        ],
    }


def _pseudonym_samples(ledger: Ledger, org: str, fields: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """Per pseudonymized field: how many distinct values are stored and a few of them."""
    found: dict[tuple[str, str], Any] = {}
    m = ledger.mark
    conn = ledger.connection()
    try:
        cur = conn.cursor()
        for meter, code in fields:
            where = f"s.org = {m} AND s.meter = {m} AND r.code = {m}"
            cur.execute(
                f"SELECT COUNT(DISTINCT r.value) FROM series s JOIN str_rollup r ON r.series = s.id WHERE {where}",  # noqa: S608
                [org, meter, code],
            )
            distinct = int(cur.fetchone()[0])
            cur.execute(
                f"SELECT DISTINCT r.value FROM series s JOIN str_rollup r ON r.series = s.id WHERE {where}"  # noqa: S608
                f" ORDER BY r.value LIMIT 3",
                [org, meter, code],
            )
            found[(meter, code)] = {"distinct": distinct, "examples": [v for (v,) in cur.fetchall()]}
    finally:
        conn.close()
    return found
