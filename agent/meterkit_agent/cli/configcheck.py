"""What ``meterkit agent validate-config`` checks beyond what parsing a configuration does:
that every catalog it names loads, and that every URL and listening address it holds could
be used, each problem naming the file, the key path and the reason.

Parsing (:func:`..config.load_config`) checks shapes and types; the checks here need the
parsed settings as a whole (a catalog file, a URL's parts). They walk every component's
settings by field name (``catalog``; ``url`` and ``*_url``; ``endpoint``), so a component
added later is checked without being listed here. ``db`` is no URL to check: it is a
database URL (``sqlite:///...``), checked when the ledger opens it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

import meterkit

from ..component import catalog_at
from ..credentials import without_url_passwords


def config_problems(cfg: Any, source: str) -> list[str]:
    """Every problem of a parsed :class:`..config.AgentConfig`, one line each."""
    problems: list[str] = []
    loaded: dict[Path, list[str]] = {}  # one catalog named by validate and derive is read once
    for path, name, value in _settings(cfg):
        where = f"{source}: {'.'.join(path)}"
        if name == "catalog" and isinstance(value, Path):
            if value not in loaded:
                loaded[value] = _catalog_problems(value)
            problems.extend(f"{where}: {line}" for line in loaded[value])
        elif isinstance(value, str) and (name == "url" or name.endswith("_url")):
            problems.extend(f"{where}: {line}" for line in _url_problems(value))
        elif isinstance(value, str) and name == "endpoint":
            check = _url_problems if "://" in value else _endpoint_problems
            problems.extend(f"{where}: {line}" for line in check(value))
    return problems


def _settings(cfg: Any) -> Iterator[tuple[list[str], str, Any]]:
    """(key path, field name, value) of every setting of every component and of the service."""
    for kind in ("receivers", "processors", "exporters", "extensions"):
        for cid, settings in getattr(cfg, kind).items():
            yield from _walk([kind, cid], settings)
    yield from _walk(["service"], cfg.service)


def _walk(path: list[str], model: BaseModel) -> Iterator[tuple[list[str], str, Any]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _walk([*path, name], value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, BaseModel):
                    yield from _walk([*path, name, str(key)], item)
        else:
            yield [*path, name], name, value


def _catalog_problems(path: Path) -> list[str]:
    try:
        catalog_at(path)  # the components' loader: a catalog that loads is read once, here
    except meterkit.CatalogError as exc:
        return [f"{problem}  [{problem.reason}]" for problem in exc.problems]  # names the file
    return []


def _url_problems(value: str) -> list[str]:
    shown = without_url_passwords(value)
    try:
        parts = urlsplit(value.strip())
        port = parts.port  # ValueError when out of 0-65535 or not a number
    except ValueError:
        return [f"{shown!r}: the port is not a number from 1 to 65535"]
    if parts.scheme not in ("http", "https"):
        return [f"{shown!r} is not an http(s) URL"]
    if not parts.hostname:
        return [f"{shown!r} names no host"]
    if port == 0:
        return [f"{shown!r}: the port is not a number from 1 to 65535"]
    return []


def _endpoint_problems(value: str) -> list[str]:
    host, sep, port = value.rpartition(":")
    if not sep or not host.strip("[]"):
        return [f"{value!r} is not host:port"]
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return [f"{value!r}: the port is not a number from 1 to 65535"]
    return []
