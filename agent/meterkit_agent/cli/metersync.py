"""Meters as code: a catalog's meters as m3ter Meter bodies, the difference between them
and what an organisation holds, and the calls that read and change it.

The comparison is of what m3ter stores: code, name, productId, data and derived fields
(category, code, name, unit, calculation) and the meter's own custom fields. Fields are
compared by code, so reordering them is not a change. What only meterkit reads (a field's
``privacy`` and ``description``, a meter's ``pii``) has no place in m3ter's Meter and is
neither pushed nor compared; ``pull`` keeps it from the file it rewrites. The
organisation-level ``custom_fields`` of a catalog are m3ter's organisation configuration,
not a meter's, and are not pushed either.

The official m3ter client is not used here: a push is four plain JSON calls, and the
client would tie the command line to its release cycle. The calls are the client's own
(the ledger's tests run the client against what this writes).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import meterkit

#: variables holding a bearer token, first found wins; the ledger's, then m3ter's
TOKEN_ENVS = ("METERKIT_LEDGER_TOKEN", "M3TER_TOKEN")
#: m3ter's client credentials (the official client's names), exchanged at ``/oauth/token``
KEY_ENV, SECRET_ENV = "M3TER_API_KEY", "M3TER_API_SECRET"
PAGE_SIZE = 200
TIMEOUT_SECONDS = 60.0
#: keys of a stored meter that the comparison reads
COMPARED = ("name", "productId", "dataFields", "derivedFields", "customFields")


class SyncError(Exception):
    """A remote refusal or an unreachable remote; ``code`` is the exit code it means."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def bodies(path: Path) -> dict[str, dict[str, Any]]:
    """Meter code -> m3ter create body, for every meter of the catalog at ``path``.
    Raises :class:`meterkit.CatalogError` when the catalog has problems."""
    from meterkit._yaml import load_yaml

    catalog = meterkit.load_catalog(path)
    raw, _ = load_yaml(path.read_text(encoding="utf-8"), str(path))
    own = {m.get("code"): m.get("custom_fields") or {} for m in raw["meters"]}
    return {code: to_body(meter, _stripped(own.get(code, {}))) for code, meter in catalog.meters.items()}


def to_body(meter: meterkit.Meter, custom: dict[str, Any]) -> dict[str, Any]:
    def one(f: Any, derived: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"category": f.category.value.upper(), "code": f.code, "name": f.name}
        if f.unit is not None:
            out["unit"] = f.unit
        if derived:
            out["calculation"] = f.calculation
        return out

    return {
        "code": meter.code,
        "name": meter.name,
        "productId": meter.product,
        "dataFields": [one(f, False) for f in meter.data_fields],
        "derivedFields": [one(f, True) for f in meter.derived_fields],
        "customFields": custom,
    }


def _stripped(value: Any) -> Any:
    from meterkit._yaml import LINE_KEY

    if isinstance(value, dict):
        return {k: _stripped(v) for k, v in value.items() if k != LINE_KEY}
    if isinstance(value, list):
        return [_stripped(v) for v in value]
    return value


def changes(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    """What differs between a wanted body and a stored meter, one line per difference;
    empty when they are the same meter."""
    found: list[str] = []
    for key in ("name", "productId"):
        if want.get(key) != have.get(key):
            found.append(f"{key}: {have.get(key)!r} -> {want.get(key)!r}")
    for key in ("dataFields", "derivedFields"):
        mine = {f["code"]: _field(f) for f in want.get(key) or []}
        theirs = {f.get("code"): _field(f) for f in have.get(key) or []}
        for code in sorted(set(mine) | set(theirs), key=str):
            if code not in theirs:
                found.append(f"{key}: + {code}")
            elif code not in mine:
                found.append(f"{key}: - {code}")
            else:
                for attr in sorted(set(mine[code]) | set(theirs[code])):
                    old, new = theirs[code].get(attr), mine[code].get(attr)
                    if old != new:
                        found.append(f"{key}.{code}.{attr}: {old!r} -> {new!r}")
    mine_custom, theirs_custom = want.get("customFields") or {}, have.get("customFields") or {}
    for name in sorted(set(mine_custom) | set(theirs_custom)):
        old, new = theirs_custom.get(name), mine_custom.get(name)
        if old != new:  # 5 and 5.0 are the same number, as JSON sends them
            found.append(f"customFields.{name}: {old!r} -> {new!r}")
    return found


def _field(f: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in f.items() if v is not None and k != "code"}


@dataclass
class Plan:
    """What a push would do: meters to create, to change (with their differences and the
    remote meter), unchanged, and present only in the organisation."""

    create: list[str] = field(default_factory=list)
    change: dict[str, list[str]] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    only_remote: list[str] = field(default_factory=list)

    @property
    def differs(self) -> bool:
        return bool(self.create or self.change or self.only_remote)

    def lines(self, prune: bool) -> list[str]:
        out = [f"+ create     {code}" for code in self.create]
        for code, diffs in self.change.items():
            out.append(f"~ change     {code}")
            out.extend(f"      {line}" for line in diffs)
        out.extend(f"= unchanged  {code}" for code in self.unchanged)
        fate = "delete" if prune else "keep (only remote; --prune deletes it)"
        out.extend(f"- {fate:<10} {code}" for code in self.only_remote)
        out.append(
            f"{len(self.create)} to create, {len(self.change)} to change, {len(self.unchanged)} unchanged,"
            f" {len(self.only_remote)} only remote"
        )
        return out


def plan(want: dict[str, dict[str, Any]], remote: dict[str, dict[str, Any]]) -> Plan:
    """The plan that makes ``remote`` (code -> stored meter) hold ``want`` (code -> body)."""
    result = Plan()
    for code, body in want.items():
        if code not in remote:
            result.create.append(code)
        elif diffs := changes(body, remote[code]):
            result.change[code] = diffs
        else:
            result.unchanged.append(code)
    result.only_remote = sorted(code for code in remote if code not in want)
    return result


class Remote:
    """An organisation's meters, at m3ter or a ledger (``url`` is the API's base)."""

    def __init__(self, url: str, org: str) -> None:
        import requests

        self.url = url.rstrip("/")
        self.base = f"{self.url}/organizations/{quote(org, safe='')}/meters"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self._token()}"

    def _token(self) -> str:
        for name in TOKEN_ENVS:
            if os.environ.get(name):
                return os.environ[name]
        key, secret = os.environ.get(KEY_ENV), os.environ.get(SECRET_ENV)
        if not (key and secret):
            names = ", ".join(TOKEN_ENVS)
            raise SyncError(f"no credentials: set {names}, or {KEY_ENV} and {SECRET_ENV}", 2)
        basic = base64.b64encode(f"{key}:{secret}".encode()).decode()
        answer = self._send(
            "POST",
            f"{self.url}/oauth/token",
            json={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {basic}"},
        )
        return str(answer["access_token"])

    def meters(self) -> dict[str, dict[str, Any]]:
        """Code -> stored meter, every page."""
        found: dict[str, dict[str, Any]] = {}
        params: dict[str, Any] = {"pageSize": PAGE_SIZE}
        while True:
            page = self._send("GET", self.base, params=params)
            for meter in page.get("data") or []:
                found[meter["code"]] = meter
            if not page.get("nextToken"):
                return found
            params["nextToken"] = page["nextToken"]

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._send("POST", self.base, json=body)

    def update(self, stored: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        # the version read: a meter changed by someone else since is refused, not overwritten
        return self._send(
            "PUT", f"{self.base}/{quote(stored['id'], safe='')}", json={**body, "version": stored["version"]}
        )

    def delete(self, stored: dict[str, Any]) -> dict[str, Any]:
        return self._send("DELETE", f"{self.base}/{quote(stored['id'], safe='')}")

    def _send(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        import requests

        from ..credentials import shown_url
        from .ledger import answer_message

        try:
            response = self.session.request(method, url, timeout=TIMEOUT_SECONDS, **kwargs)
        except requests.RequestException as exc:
            raise SyncError(f"cannot reach {shown_url(self.url)}: {type(exc).__name__}") from None
        if response.status_code in (401, 403):
            raise SyncError(f"{shown_url(self.url)} refused the credentials ({response.status_code})", 2)
        if not 200 <= response.status_code < 300:
            raise SyncError(f"{method} {shown_url(url)} answered {response.status_code}: {answer_message(response)}")
        answer: dict[str, Any] = response.json()
        return answer
