"""The backend's side of a reconciliation: per-bucket content digests, the uids of a bucket
with their content hashes, stored measurements by uid, and the journal's anchor. Read
from a ledger database directly, or asked of a ledger over HTTP
(:mod:`..ledger.digests` serves both)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

from ..ledger import Ledger
from ..ledger.digests import Digests, hour_ms
from .chain import Anchor

#: uids per lookup request (the ledger's limit)
LOOKUP_CHUNK = 5_000
#: buckets per listing request
LISTING_CHUNK = 2_000


class ReconcileError(Exception):
    """Reconciliation cannot give an answer (unreadable journal, unreachable backend, ...)."""


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

    def buckets(self, start: str, end: str, meter: str | None, account: str | None) -> list[dict[str, Any]]:
        """Per (meter, account, hour) in [start, end): meter, account, hour, count, content, check."""
        ...

    def listing(self, buckets: list[tuple[str, str, str]]) -> list[list[str]]:
        """[uid, meter, account, hour, content_hash] for every row of these buckets."""
        ...

    def lookup(self, uids: list[str]) -> dict[str, Any]:
        """{"measurements": [...], "conflicts": [...]} for these uids, wherever they are."""
        ...

    def anchor(self, journal: str) -> Anchor | None: ...


class LedgerDbBackend:
    """Reads a ledger database directly."""

    def __init__(self, url: str, org: str) -> None:
        self.name = f"ledger database ({url.split('://', 1)[0]})"
        self.digests = Digests(Ledger(url))
        self.org = org

    def buckets(self, start: str, end: str, meter: str | None, account: str | None) -> list[dict[str, Any]]:
        return self.digests.buckets(self.org, hour_ms(start), hour_ms(end), meter, account)

    def listing(self, buckets: list[tuple[str, str, str]]) -> list[list[str]]:
        return self.digests.listing(self.org, buckets)

    def lookup(self, uids: list[str]) -> dict[str, Any]:
        return self.digests.lookup(self.org, uids)

    def anchor(self, journal: str) -> Anchor | None:
        return _anchor(self.digests.anchors(self.org, journal))


class LedgerHttpBackend:
    """Asks a ledger over HTTP."""

    def __init__(self, url: str, org: str, token: str | None) -> None:
        self.name = f"ledger at {url}"
        self.url = url.rstrip("/")
        self.org = org
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.url}/organizations/{self.org}/{path}"
        try:
            r = self.session.request(method, url, timeout=300, **kwargs)
        except requests.RequestException as exc:
            raise ReconcileError(f"cannot reach the backend at {self.url}: {type(exc).__name__}") from None
        if r.status_code == 404 and path.startswith("reconcile/"):
            raise ReconcileError(
                f"the backend at {self.url} serves no reconciliation digests (GET .../{path} answered 404):"
                " reconciling measurement by measurement needs a meterkit ledger"
            )
        if r.status_code != 200:
            raise ReconcileError(f"the backend at {self.url} answered {r.status_code} to {path}: {r.text[:300]}")
        return r.json()

    def buckets(self, start: str, end: str, meter: str | None, account: str | None) -> list[dict[str, Any]]:
        params = {
            "from": start,
            "to": end,
            **({"meter": meter} if meter else {}),
            **({"account": account} if account else {}),
        }
        found: list[dict[str, Any]] = self._call("GET", "reconcile/buckets", params=params)["buckets"]
        return found

    def listing(self, buckets: list[tuple[str, str, str]]) -> list[list[str]]:
        out: list[list[str]] = []
        for i in range(0, len(buckets), LISTING_CHUNK):
            chunk = [list(b) for b in buckets[i : i + LISTING_CHUNK]]
            out.extend(self._call("POST", "reconcile/uids", json={"buckets": chunk})["uids"])
        return out

    def lookup(self, uids: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"measurements": [], "conflicts": []}
        for i in range(0, len(uids), LOOKUP_CHUNK):
            found = self._call("POST", "reconcile/lookup", json={"uids": uids[i : i + LOOKUP_CHUNK]})
            out["measurements"].extend(found["measurements"])
            out["conflicts"].extend(found["conflicts"])
        return out

    def anchor(self, journal: str) -> Anchor | None:
        return _anchor(self._call("GET", "anchors", params={"journal": journal})["anchors"])


def _anchor(rows: list[dict[str, Any]]) -> Anchor | None:
    if not rows:
        return None
    row = rows[0]
    return Anchor(int(row["seq"]), str(row["hash"]), str(row.get("at", "")), str(row.get("regressed") or ""))
