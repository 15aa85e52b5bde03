"""Writing an organisation's meters as a ``meters.yaml`` (``meterkit meters pull``).

m3ter's Meter has no place for what only meterkit reads, so rewriting a catalog from m3ter
alone would lose a field's ``privacy`` and ``description``, a meter's ``pii`` and
``description``, and the organisation's ``custom_fields`` and ``span_rules``; they are
carried over from the file being replaced, by meter and field code. The result is checked
as a catalog before it replaces anything, and written whole or not at all (a temporary
file renamed over the old one).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

import meterkit

_FIELD_ONLY_HERE = ("privacy", "description")
_METER_ONLY_HERE = ("pii", "description")
_TOP_ONLY_HERE = ("custom_fields", "span_rules")


def write_catalog(out: Path, meters: list[dict[str, Any]]) -> None:
    """Write ``meters`` (stored m3ter meters) to ``out``. Raises :class:`meterkit.CatalogError`
    when they do not make a valid catalog (``out`` is then unchanged) and ``OSError``."""
    old = _existing(out)
    old_meters = {m.get("code"): m for m in old.get("meters") or [] if isinstance(m, dict)}
    doc: dict[str, Any] = {k: old[k] for k in _TOP_ONLY_HERE if k in old}
    doc["meters"] = [_meter(m, old_meters.get(m.get("code")) or {}) for m in meters]
    meterkit.catalog_from_dict(doc, str(out))
    text = "# written by `meterkit meters pull`\n" + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _existing(out: Path) -> dict[str, Any]:
    """The file being replaced, as plain data; empty when there is none or it is not YAML."""
    from meterkit._yaml import load_yaml

    try:
        doc, _ = load_yaml(out.read_text(encoding="utf-8"), str(out))
    except (OSError, UnicodeDecodeError, meterkit.CatalogError):
        return {}
    clean = _stripped(doc)
    return clean if isinstance(clean, dict) else {}


def _stripped(value: Any) -> Any:
    from meterkit._yaml import LINE_KEY

    if isinstance(value, dict):
        return {k: _stripped(v) for k, v in value.items() if k != LINE_KEY}
    if isinstance(value, list):
        return [_stripped(v) for v in value]
    return value


def _meter(stored: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"code": stored.get("code"), "name": stored.get("name")}
    if stored.get("productId"):
        out["product"] = stored["productId"]
    out.update({k: old[k] for k in _METER_ONLY_HERE if k in old})
    for key, here in (("dataFields", "data_fields"), ("derivedFields", "derived_fields")):
        before = {f.get("code"): f for f in old.get(here) or [] if isinstance(f, dict)}
        out[here] = [_field(f, before.get(f.get("code")) or {}) for f in stored.get(key) or []]
    if stored.get("customFields"):
        out["custom_fields"] = dict(stored["customFields"])
    return out


def _field(stored: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"code": stored.get("code"), "name": stored.get("name"), "category": stored.get("category")}
    if stored.get("unit"):
        out["unit"] = stored["unit"]
    if "calculation" in stored:
        out["calculation"] = stored["calculation"]
    out.update({k: old[k] for k in _FIELD_ONLY_HERE if k in old})
    return out
