"""Drill-down: for the buckets whose digests differ, name every measurement that differs.

Each delivery that touched such a bucket is compared with the backend on its own: its
uids (from the journal's ``sources``) are placed where the backend holds them (its uid
listing for the buckets involved, a lookup by uid for the rest), and for each bucket the
delivery's journaled count and digest are compared with the digest of the rows it put
there. A uid delivered twice is compared once per delivery, so an idempotent re-send
matches twice (and is counted as re-sent), a conflicting one fails one of the two.

- **missing**: delivered, and nowhere at the backend;
- **extra**: at the backend, in no proven delivery (dead-lettered, or never seen);
- **altered**: at the backend with other content than delivered, or moved to another
  meter, account or hour; the fields that differ are named where the original content is
  found (spool segments, dead letters, the ledger's record of a refused re-send) and makes
  the delivery's digest come out right, else the content hash is said to differ;
- **conflicting**: delivered more than once with different content under one uid.

Where one delivery's bucket holds a single unexplained difference, the digest arithmetic
names it without any original (:meth:`..contentdigest.Digest.altered`); two or more in
one delivery's bucket, with the originals gone, are reported together as ``unresolved``.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..contentdigest import Digest, bucket_of, fold
from .backends import Backend
from .journal import contains_uid, expand_uids
from .journalview import BucketKey, JournalView, Key
from .originals import Originals, differences


@dataclass(frozen=True)
class Finding:
    kind: str  # missing_at_backend | extra_at_backend | altered | conflicting | unresolved
    uid: str
    bucket: BucketKey
    detail: str


@dataclass
class Delivery:
    seq: int
    batch: str
    uids: set[str]
    counts: dict[BucketKey, int]
    digests: dict[BucketKey, Digest]  # absent for a delivery journaled by an older agent

    @classmethod
    def of(cls, entry: dict[str, Any]) -> Delivery:
        uids = {u for s in entry.get("sources", []) for u in expand_uids(s.get("uids"))}
        counts, digests = {}, {}
        for t in entry.get("totals", []):
            key = (str(t.get("meter")), str(t.get("account")), str(t.get("hour", "")))
            counts[key] = int(t.get("count", 0))
            with contextlib.suppress(ValueError):  # an older agent's entry: no digest
                digests[key] = Digest.from_json(t)
        return cls(int(entry.get("seq", 0)), str(entry.get("batch", "")), uids, counts, digests)

    @property
    def name(self) -> str:
        return f"batch {self.batch[:12]} (journal entry {self.seq})"


@dataclass
class Result:
    findings: list[Finding] = field(default_factory=list)
    resent: Counter[Key] = field(default_factory=Counter)
    resent_at: Counter[BucketKey] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


class DrillDown:
    def __init__(self, view: JournalView, backend: Backend, originals: Originals) -> None:
        self.view = view
        self.backend = backend
        self.originals = originals
        self.at: dict[str, tuple[BucketKey, str]] = {}  # uid -> where the backend holds it, its hash
        self.bodies: dict[str, Any] = {}  # uid -> the backend's body, once looked up
        self.refused: dict[str, dict[str, Any]] = defaultdict(dict)  # uid -> hash -> body the ledger refused
        self.confirmed: dict[str, set[int]] = defaultdict(set)  # uid -> deliveries it matches
        self.wrong: dict[str, dict[int, tuple[BucketKey, str]]] = defaultdict(dict)  # uid -> seq -> (bucket, detail)
        self.short: dict[int, list[BucketKey]] = defaultdict(list)  # seq -> its buckets holding fewer than it put
        self.result = Result()

    def run(self, keys: set[BucketKey]) -> Result:
        offsets = [o for k in keys if k in self.view.buckets for o in self.view.buckets[k].offsets]
        deliveries = [Delivery.of(e) for e in self.view.entries_at(offsets)]
        # Only the differing buckets are listed: a delivery's other buckets matched, so its
        # uids not listed here are where it put them unless their count says otherwise.
        held: dict[BucketKey, dict[str, str]] = defaultdict(dict)
        for uid, meter, account, hour, h in self.backend.listing(sorted(keys)):
            self.at[uid] = ((meter, account, hour), h)
            held[(meter, account, hour)][uid] = h
        self._locate(deliveries, keys)
        mismatched = []
        for d in deliveries:
            for key in sorted(keys & d.counts.keys()):
                mine = {u: h for u, h in held[key].items() if u in d.uids}
                if len(mine) < d.counts[key]:
                    self.short[d.seq].append(key)
                if not self._matches(d, key, mine):
                    mismatched.append((d, key, mine))
        # Surpluses first: a uid moved from one of a delivery's buckets to another is named
        # where it arrived, which then explains the bucket it left.
        mismatched.sort(key=lambda t: (len(t[2]) - t[0].counts[t[1]], t[0].seq, t[1]), reverse=True)
        for d, key, mine in mismatched:
            self._resolve(d, key, mine)
        delivered = set().union(*(d.uids for d in deliveries)) if deliveries else set()
        self._extras({u: key for key in keys for u in held[key] if u not in delivered})
        self._missing_or_moved(deliveries)
        self._conclude()
        return self.result

    def _locate(self, deliveries: list[Delivery], listed: set[BucketKey]) -> None:
        """Look up, wherever the backend holds them, a delivery's uids missing from the
        listing, unless its buckets outside the listing account for just as many."""
        unknown: list[str] = []
        for d in deliveries:
            elsewhere = [u for u in d.uids if u not in self.at]
            if len(elsewhere) != sum(n for k, n in d.counts.items() if k not in listed):
                unknown.extend(elsewhere)
        self._lookup(unknown)

    def _lookup(self, uids: Iterable[str]) -> None:
        wanted = sorted(set(uids) - self.bodies.keys())
        if not wanted:
            return
        found = self.backend.lookup(wanted)
        for m in found["measurements"]:
            self.at[m["uid"]] = ((m["meter"], m["account"], m["hour"]), m["content_hash"])
            self.bodies[m["uid"]] = m["body"]
        for c in found["conflicts"]:
            self.refused[c["uid"]][c["content_hash"]] = c["body"]
        for u in wanted:
            self.bodies.setdefault(u, None)

    def _matches(self, d: Delivery, key: BucketKey, held: dict[str, str]) -> bool:
        """Whether a delivery's bucket holds what it delivered. An older agent's delivery has
        no digest: it is compared by count, and its uids are named missing or extra alone."""
        expected = d.digests.get(key)
        if expected is None:
            if len(held) == d.counts[key]:
                self._confirm_all(held, d)
            return True
        if fold(list(held.values())) == expected:
            self._confirm_all(held, d)
            return True
        return False

    def _resolve(self, d: Delivery, key: BucketKey, held: dict[str, str]) -> None:
        """One delivery's bucket differs: name what differs, by originals or arithmetic."""
        expected = d.digests[key]
        self._lookup([*held, *(u for u in d.uids if u not in self.at)])
        elsewhere = {u for u in d.uids if u not in held}
        versions = self.originals.versions(set(held) | elsewhere)
        # Originals first: a version of each uid that, put in place of what the backend
        # holds, makes the delivery's digest come out right.
        chosen = {}
        for u, h in held.items():
            fits = [v for v, m in versions.get(u, {}).items() if bucket_of(m) == key]
            chosen[u] = h if h in fits or not fits else fits[0]
        gone = [v for u in elsewhere for v, m in versions.get(u, {}).items() if bucket_of(m) == key]
        if fold([*chosen.values(), *gone]) == expected:
            for u, h in held.items():
                if chosen[u] == h:
                    self.confirmed[u].add(d.seq)
                else:
                    self.wrong[u][d.seq] = (key, differences(versions[u][chosen[u]], self.bodies.get(u)))
            return
        surplus = len(held) - expected.count
        if surplus == 0 and (named := expected.altered(held)) is not None:
            u, original_hash = named
            self._confirm_all(held, d, but=u)
            self.wrong[u][d.seq] = (key, self._describe(u, original_hash, versions))
            return
        if surplus == 1:
            for u in held:
                if fold([h for v, h in held.items() if v != u]) == expected:
                    self._confirm_all(held, d, but=u)
                    self.wrong[u][d.seq] = (key, f"delivered in {d.name} under another meter, account or hour")
                    return
        if surplus < 0 and expected.minus(fold(list(held.values()))).single():
            # One fewer than delivered, and what is missing is one whole measurement: the
            # rest is as delivered. The one gone is named by uid, missing or moved.
            self._confirm_all(held, d)
            return
        uids = ", ".join(sorted(held)[:20]) + (", ..." if len(held) > 20 else "")
        detail = (
            f"{d.name}: {expected.count} delivered, {len(held)} held here, content differs; with the originals"
            f" gone the measurements that differ cannot be told apart among: {uids}"
        )
        self.result.findings.append(Finding("unresolved", "", key, detail))

    def _confirm_all(self, held: dict[str, str], d: Delivery, but: str | None = None) -> None:
        for u in held:
            if u != but:
                self.confirmed[u].add(d.seq)

    def _describe(self, u: str, original_hash: str, versions: dict[str, dict[str, dict[str, Any]]]) -> str:
        original = versions.get(u, {}).get(original_hash) or self.refused.get(u, {}).get(original_hash)
        if original is not None:
            return differences(original, self.bodies.get(u))
        held = self.at[u][1]
        return (
            f"the content hash differs: delivered {original_hash[:16]}..., held {held[:16]}... (original not on disk)"
        )

    def _where(self, u: str) -> str:
        key, _ = self.at[u]
        return f"the backend holds it under {key[0]}/{key[1]} at {key[2]}"

    def _extras(self, candidates: dict[str, BucketKey]) -> None:
        """Uids held in a differing bucket that no delivery into it names: delivered for
        another hour (outside the period), dead-lettered, or never delivered."""
        if not candidates:
            return
        seen: dict[str, str] = {}
        for entry in self.view.proven():
            kind = entry.get("type")
            if kind == "delivery":
                where = f"delivered in batch {str(entry.get('batch'))[:12]} (journal entry {entry.get('seq')})"
                sets = [s.get("uids") for s in entry.get("sources", [])]
            elif kind in ("dead_letter", "replay", "repair"):
                where, sets = f"{kind.replace('_', '-')} in entry {entry.get('seq')}", [entry.get("uids")]
            else:
                continue
            for compressed in sets:
                if len(candidates) > 64:
                    found: Iterable[str] = candidates.keys() & set(expand_uids(compressed))
                else:
                    found = [u for u in candidates if isinstance(compressed, dict) and contains_uid(compressed, u)]
                for u in found:
                    seen.setdefault(u, where)
        for u, key in sorted(candidates.items()):
            noted = seen.get(u)
            if noted and noted.startswith("delivered"):
                detail = f"{noted} for a bucket outside this period; the backend holds it here"
                self.result.findings.append(Finding("altered", u, key, detail))
            else:
                why = f"the journal has it only as {noted}" if noted else "no proven journal entry delivered it"
                self.result.findings.append(Finding("extra_at_backend", u, key, why))

    def _missing_or_moved(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            for u in sorted(d.uids):
                located = self.at.get(u)
                if located is None and self.bodies.get(u, False) is None:
                    key = self._original_bucket(u, d)
                    detail = f"delivered in {d.name}; not at the backend"
                    self.result.findings.append(Finding("missing_at_backend", u, key, detail))
                elif located is not None and located[0] not in d.counts:
                    self.wrong[u][d.seq] = (self._original_bucket(u, d), f"delivered in {d.name}; {self._where(u)}")

    def _original_bucket(self, u: str, d: Delivery) -> BucketKey:
        """Where a delivery put a uid that is not there now: by its original where one is
        found, else the delivery's bucket that came up short."""
        for m in self.originals.versions([u]).get(u, {}).values():
            if bucket_of(m) in d.counts:
                return bucket_of(m)
        candidates = self.short.get(d.seq) or [k for k in sorted(d.counts) if self.view.wanted(k[0], k[1])]
        return candidates[0] if candidates else sorted(d.counts)[0]

    def _conclude(self) -> None:
        for u, wrong in sorted(self.wrong.items()):
            (seq, (key, detail)), *_ = sorted(wrong.items())
            if self.confirmed.get(u):
                firsts = ", ".join(str(s) for s in sorted(self.confirmed[u]))
                refused = " (the ledger refused it as a conflicting re-send)" if self.refused.get(u) else ""
                detail = (
                    f"delivered again in journal entry {seq} with other content{refused}: {detail};"
                    f" entry {firsts} matches the backend"
                )
                self.result.findings.append(Finding("conflicting", u, key, detail))
            else:
                self.result.findings.append(Finding("altered", u, key, detail))
        for u, seqs in self.confirmed.items():
            if len(seqs) > 1:
                key = self.at[u][0]
                self.result.resent[(key[0], key[1])] += len(seqs) - 1
                self.result.resent_at[key] += len(seqs) - 1
