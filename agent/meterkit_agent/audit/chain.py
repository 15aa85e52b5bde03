"""Checking the journal's chain: every link, the key, and the anchor the backend keeps.

:class:`Walk` reads the journal once, yielding each entry whose link holds, and stops at
the first that does not: an edited entry fails its own hash, a removed one leaves a gap in
``seq``, a reordered one breaks ``prev``, a line cut mid-write has no newline. Entries
from the ``keyed`` marker on must carry an HMAC under ``journal.key``; recomputing their
hashes without the key breaks them. Against the anchor (the latest head the backend
received, :class:`Anchor`) it also finds what no local check can: entries removed from the
end, or a chain rewritten by someone holding the key. Reconciliation trusts only the
entries the walk proves (:attr:`Verdict.trusted`) and treats the rest as never written.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .journal import GENESIS, KEYED, entry_hash, link_hash


@dataclass(frozen=True)
class Anchor:
    """The backend's record of this journal: the latest head it received, and the first
    time a head arrived that went backwards (a journal cut, then written on)."""

    seq: int
    hash: str
    at: str = ""
    regressed: str = ""


@dataclass
class Verdict:
    ok: bool
    entries: int
    head: str
    line: int | None = None
    seq: int | None = None
    reason: str = ""
    #: what went wrong: "broken" (a link), "truncated", "rewritten", "regressed" (the anchor)
    problem: str = ""
    #: how many leading entries are proven; reconciliation ignores the rest
    trusted: int = 0
    keyed_from: int | None = None  # seq of the ``keyed`` marker
    anchored: str = ""  # what the anchor check found, when there was one
    notes: list[str] = field(default_factory=list)


class Walk:
    """Iterate ``(byte offset, entry)`` over the entries whose links hold, in order; then
    :attr:`verdict` says how the chain ended."""

    def __init__(
        self,
        path: Path,
        key: bytes | None = None,
        anchor: Anchor | None = None,
        expected_head: str | None = None,
    ) -> None:
        self.path = path
        self.key = key
        self.anchor = anchor
        self.expected_head = expected_head
        self.verdict = Verdict(False, 0, GENESIS, reason="not walked yet")

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if not self.path.exists():
            self.verdict = Verdict(False, 0, GENESIS, reason=f"{self.path} does not exist")
            return
        prev, count, offset = GENESIS, 0, 0
        keyed_from: int | None = None
        at_anchor: str | None = None
        with self.path.open("rb") as f:
            for line_no, line in enumerate(f, start=1):
                start, offset = offset, offset + len(line)
                entry, why = self._check(line, prev, count + 1, keyed_from)
                if why:
                    # Past the marker, the HMAC proves everything before the failure; an
                    # unkeyed entry before a broken marker is proven by nothing.
                    at_marker = keyed_from is None and isinstance(entry, dict) and entry.get("type") == KEYED
                    trusted = 0 if at_marker and self.key is not None else count
                    self.verdict = Verdict(False, count, prev, line_no, count + 1, why, "broken", trusted, keyed_from)
                    return
                assert entry is not None
                if entry.get("type") == KEYED:
                    keyed_from = count + 1
                if self.anchor is not None and count + 1 == self.anchor.seq:
                    at_anchor = entry["hash"]
                yield start, entry
                prev, count = entry["hash"], count + 1
        self.verdict = self._end(count, prev, keyed_from, at_anchor)

    def _check(self, line: bytes, prev: str, seq: int, keyed_from: int | None) -> tuple[dict[str, Any] | None, str]:
        if not line.endswith(b"\n"):
            return None, "truncated line (no newline): the journal was cut mid-write"
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None, "not JSON"
        if not isinstance(entry, dict):
            return None, "not a JSON object"
        found = entry.get("seq")
        if found != seq:
            what = "removed" if isinstance(found, int) and found > seq else "reordered or duplicated"
            return entry, f"expected entry {seq}, found {found}: an entry was {what}"
        if entry.get("prev") != prev:
            return entry, "its 'prev' is not the hash of the entry before it"
        keyed = keyed_from is not None or entry.get("type") == KEYED
        if keyed and self.key is None:
            return entry, "the journal is keyed from here, but journal.key is missing: its entries cannot be proven"
        if entry.get("type") == KEYED and keyed_from is not None:
            return entry, f"a second 'keyed' marker (the first is entry {keyed_from})"
        if not _hash_holds(line, entry, prev, self.key if keyed else None):
            if keyed:
                return (
                    entry,
                    "its content does not match its keyed hash: edited, or rewritten without the journal's key",
                )
            return entry, "its content does not match its hash: the entry was edited"
        return entry, ""

    def _end(self, count: int, head: str, keyed_from: int | None, at_anchor: str | None) -> Verdict:
        verdict = Verdict(True, count, head, trusted=count, keyed_from=keyed_from)
        if keyed_from is None:
            if self.key is not None and count:
                verdict.ok, verdict.trusted, verdict.problem = False, 0, "broken"
                verdict.reason = (
                    "journal.key exists but no entry is keyed: the journal was rewritten without its key"
                    " (or the agent stopped between creating the key and writing its first entry)"
                )
                return verdict
            if count:
                verdict.notes.append(
                    "unkeyed: written by an older agent; anyone who can write the file could rewrite it and"
                    " recompute every hash (new entries are keyed from a marked point)"
                )
        elif keyed_from > 1:
            verdict.notes.append(f"entries 1 to {keyed_from - 1} were written unkeyed by an older agent")
        anchor = self.anchor
        if anchor is not None:
            if count < anchor.seq:
                verdict.ok, verdict.problem = False, "truncated"
                verdict.reason = (
                    f"the backend's anchor is entry {anchor.seq} (received {anchor.at or 'earlier'}), but the"
                    f" journal ends at entry {count}: entries were removed from the end"
                )
            elif at_anchor != anchor.hash:
                verdict.ok, verdict.trusted, verdict.problem = False, 0, "rewritten"
                verdict.reason = (
                    f"entry {anchor.seq} does not have the hash the backend was given for it: the journal was"
                    " rewritten, so none of it up to there can be trusted"
                )
            else:
                verdict.anchored = f"matches the backend's anchor at entry {anchor.seq}"
            if anchor.regressed and verdict.ok:
                verdict.ok, verdict.problem = False, "regressed"
                verdict.reason = f"the backend saw this journal go backwards (cut, then written on): {anchor.regressed}"
        if self.expected_head is not None and self.expected_head != head and verdict.ok:
            verdict.ok, verdict.problem = False, "truncated"
            verdict.reason = "the chain does not end at the exported head: entries were removed from the end"
        return verdict


def _hash_holds(line: bytes, entry: dict[str, Any], prev: str, key: bytes | None) -> bool:
    """Whether an entry's hash is right. This agent writes lines with sorted keys, so the
    line less its ``"hash"`` member is the canonical text, hashed as it is; an older
    agent's line is parsed and re-serialised."""
    claimed = entry.get("hash")
    if not isinstance(claimed, str):
        return False
    member = b'"hash":"' + claimed.encode() + b'",'
    if line.count(member) == 1:
        canonical = line.rstrip(b"\n").replace(member, b"", 1)
        if hmac.compare_digest(link_hash(prev, canonical, key), claimed):
            return True
    return hmac.compare_digest(entry_hash(prev, entry, key), claimed)


def verify(
    path: Path, expected_head: str | None = None, key: bytes | None = None, anchor: Anchor | None = None
) -> Verdict:
    """Walk the chain; report the first broken link, or what the anchor or the exported
    head show was cut or rewritten."""
    walk = Walk(path, key, anchor, expected_head)
    for _ in walk:
        pass
    return walk.verdict
