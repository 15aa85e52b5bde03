"""The content digest of a set of measurements: what the audit journal records per bucket
for each delivery, what the ledger computes per bucket from the rows it holds, and what
reconciliation compares (docs/audit-journal.md, "Bucket digests").

A bucket is a (meter, account, UTC hour). Over the measurements in it:

- ``count``: how many;
- ``content``: the sum, modulo 2**256, of their content hashes
  (:func:`meterkit._model.content_hash`, sha256 of the sorted-key JSON) read as 256-bit
  integers, 64 hex digits;
- ``check``: the XOR of the first 16 hex digits of those hashes, 16 hex digits.

Both are independent of order, so the agent adds up what each batch delivered and the
ledger what it stores, each in its own order. A content hash covers the uid, so two
offsetting edits (one value up, another down) change ``content`` as surely as one does.
The sum, not an XOR, is the digest: an XOR of hashes is linear over GF(2), so a forger
could solve for rows that cancel, and a uid delivered twice would vanish from it. The
XOR ``check`` serves drill-down only: it confirms which single measurement of a small
group is the altered one (:meth:`Digest.altered`).

This module sits at the top of the package, as :mod:`.httpserver` does, because three
parts share the definition and may not import each other: the agent's commit step
(which must not load the ledger's database layer), reconciliation and the ledger.
"""

from __future__ import annotations

import functools
import operator
import sys
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MOD = 1 << 256
_CHECK_SHIFT = 192  # the first 16 hex digits of a 64-digit hash are its top 64 bits


def bucket_of(m: Mapping[str, Any]) -> tuple[str, str, str]:
    """(meter, account, hour) as :func:`meterkit._model.tally` keys a measurement."""
    meter, account, ts = m.get("meter"), m.get("account"), m.get("ts")
    return (
        meter if type(meter) is str else str(meter),
        account if type(account) is str else str(account),
        (ts[:13] if type(ts) is str else "") + ":00:00Z",
    )


@dataclass
class Digest:
    """Count, content sum and check of a set of measurements (or of the difference
    between two sets, during drill-down)."""

    count: int = 0
    total: int = 0
    check: int = 0

    def add(self, content_hash: str) -> None:
        value = int(content_hash, 16)
        self.count += 1
        self.total = (self.total + value) % MOD
        self.check ^= value >> _CHECK_SHIFT

    def merge(self, other: Digest) -> None:
        self.count += other.count
        self.total = (self.total + other.total) % MOD
        self.check ^= other.check

    def minus(self, other: Digest) -> Digest:
        return Digest(self.count - other.count, (self.total - other.total) % MOD, self.check ^ other.check)

    def single(self) -> bool:
        """Whether this (a difference of two digests) is the digest of one measurement:
        its check agrees with its content. Wrong for a mixture with odds of 2**-64."""
        return self.count == 1 and self.check == self.total >> _CHECK_SHIFT

    def altered(self, hashes: Mapping[str, str]) -> tuple[str, str] | None:
        """This digest is the expected one, ``hashes`` (uid -> content hash) what is held,
        with the same count. If exactly one held measurement differs from what was
        expected, return (its uid, the content hash it should have), else None."""
        held = Digest()
        for h in hashes.values():
            held.add(h)
        if held.count != self.count or held == self:
            return None
        found = None
        for uid, h in hashes.items():
            value = int(h, 16)
            original = (self.total - held.total + value) % MOD
            if held.check ^ (value >> _CHECK_SHIFT) ^ (original >> _CHECK_SHIFT) == self.check:
                if found is not None:
                    return None  # two candidates fit: cannot tell which
                found = (uid, f"{original:064x}")
        return found

    def as_json(self) -> dict[str, Any]:
        return {"content": f"{self.total:064x}", "check": f"{self.check:016x}"}

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Digest:
        """From a journal totals row or a ledger bucket; ValueError if malformed."""
        content, check = row.get("content"), row.get("check")
        if not isinstance(content, str) or not isinstance(check, str) or len(content) != 64 or len(check) != 16:
            raise ValueError("no content digest")
        return cls(int(row.get("count", 0)), int(content, 16), int(check, 16))


def fold(hashes: Sequence[str]) -> Digest:
    """The digest of many content hashes (see :func:`fold_joined`)."""
    return fold_joined("".join(hashes), len(hashes))


def fold_joined(joined: str, count: int) -> Digest:
    """The digest of ``count`` content hashes written one after the other, at C speed: read
    as one array of 64-bit limbs (most significant first), summed column by column. Raises
    ValueError if they are not ``count`` hashes of 64 hex digits."""
    if len(joined) != 64 * count:
        raise ValueError("a content hash is not 64 hex digits")
    return _fold_raw(bytes.fromhex(joined), count)


def fold_digests(digests: Sequence[bytes]) -> Digest:
    """The digest of content hashes given as their 32 bytes each (``sha256().digest()``,
    what the pipeline keeps), with no hex in between. Raises ValueError if one is not 32
    bytes long."""
    raw = b"".join(digests)
    if len(raw) != 32 * len(digests):
        raise ValueError("a content hash is not 32 bytes")
    if not digests:
        return Digest()
    # Each hash as one integer (int.from_bytes reads big-endian, as the hex spells it):
    # fewer, larger additions than summing the limbs, which only the check needs.
    total = sum(map(int.from_bytes, digests)) % MOD
    return Digest(len(digests), total, functools.reduce(operator.xor, _limbs(raw)[0::4], 0))


def _fold_raw(raw: bytes, count: int) -> Digest:
    if not count:
        return Digest()
    limbs = _limbs(raw)
    top = limbs[0::4]
    total = (sum(top) << 192) + (sum(limbs[1::4]) << 128) + (sum(limbs[2::4]) << 64) + sum(limbs[3::4])
    return Digest(count, total % MOD, functools.reduce(operator.xor, top, 0))


def _limbs(raw: bytes) -> array[int]:
    """``raw`` as 64-bit limbs, each its 8 bytes read big-endian, as the hex spells it."""
    limbs = array("Q")
    limbs.frombytes(raw)
    if sys.byteorder == "little":
        limbs.byteswap()
    return limbs
