"""The backend's side of a reconciliation: what a backend holds for a meter, account and
period, read from a ledger database directly or asked of any backend with the ledger's
usage API over HTTP."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

from ..ledger import Ledger


class ReconcileError(Exception):
    """Reconciliation cannot give an answer (broken journal, unreachable backend, ...)."""


@dataclass
class Side:
    count: int = 0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, count: int, sums: dict[str, Any]) -> None:
        self.count += count
        for name, value in sums.items():
            if isinstance(value, str):  # a whole-number sum past 64 bits, written as digits
                value = int(value)
            self.sums[name] = self.sums.get(name, 0) + value


class Backend(Protocol):
    name: str

    def totals(self, meter: str, account: str | None, start: str, end: str, fields: list[str]) -> dict[str, Side]: ...

    def uids(self, meter: str, account: str | None, start: str, end: str) -> set[str]: ...


class LedgerDbBackend:
    """Reads a ledger database directly."""

    def __init__(self, url: str, org: str) -> None:
        self.name = f"ledger database ({url.split('://', 1)[0]})"
        self.ledger = Ledger(url)
        self.org = org

    def totals(self, meter: str, account: str | None, start: str, end: str, fields: list[str]) -> dict[str, Side]:
        out: dict[str, Side] = defaultdict(Side)
        for m in self.ledger.rows(self.org, meter, account, start, end):
            side = out[m["account"]]
            sums = {}
            for name in fields:
                category, _, code = name.partition(".")
                value = (m.get(category) or {}).get(code)
                if isinstance(value, int | float):
                    sums[name] = value
            side.add(1, sums)
        return dict(out)

    def uids(self, meter: str, account: str | None, start: str, end: str) -> set[str]:
        return {m["uid"] for m in self.ledger.rows(self.org, meter, account, start, end)}


class LedgerHttpBackend:
    """Asks a ledger (or any backend with the same usage API) over HTTP."""

    def __init__(self, url: str, org: str, token: str | None) -> None:
        self.name = f"ledger at {url}"
        self.url = url.rstrip("/")
        self.org = org
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        try:
            r = self.session.get(f"{self.url}/organizations/{self.org}/{path}", params=params, timeout=60)
        except requests.RequestException as exc:
            raise ReconcileError(f"cannot reach the backend at {self.url}: {type(exc).__name__}") from None
        if r.status_code != 200:
            raise ReconcileError(f"the backend at {self.url} answered {r.status_code} to {path}: {r.text[:300]}")
        return r.json()

    def totals(self, meter: str, account: str | None, start: str, end: str, fields: list[str]) -> dict[str, Side]:
        base: dict[str, Any] = {"meter": meter, "from": start, "to": end}
        if account:
            base["account"] = account
        out: dict[str, Side] = defaultdict(Side)
        for row in self._get("usage", {**base, "aggregation": "COUNT"})["data"]:
            out[row["account"]].count = int(row["value"])
        for name in fields:
            code = name.partition(".")[2]
            for row in self._get("usage", {**base, "aggregation": "SUM", "field": code})["data"]:
                value = row["value"]
                out[row["account"]].sums[name] = int(value) if isinstance(value, str) else value
        return dict(out)

    def uids(self, meter: str, account: str | None, start: str, end: str) -> set[str]:
        params: dict[str, Any] = {"meter": meter, "from": start, "to": end}
        if account:
            params["account"] = account
        return set(self._get("uids", params)["uids"])
