"""What the ledger answers about corrections: a measurement with its ``corrected`` state,
and a backfill batch's measurements, each with its own (:mod:`.corrections` stores them).

``corrected`` is ``{"reversed_by": uid | null, "replaced_by": uid | null}``, from the
``corrections`` table (org_id, uid) → (of_uid, kind). A batch's page carries it for every
measurement, read in one query per page, so ``meterkit backfill revert`` needs no request
per measurement to know which are reversed or amended already.
"""

from __future__ import annotations

from typing import Any

from meterkit._corrections import REPLACEMENT, REVERSAL

_STATE = {REVERSAL: "reversed_by", REPLACEMENT: "replaced_by"}


def state(ledger: Any, org: str, uid: str) -> dict[str, Any] | None:
    """The measurement a :class:`.store.Ledger` stores for a uid, plus ``corrected``: the
    uids of its stored reversal and replacement (``reversed_by``, ``replaced_by``; None for
    neither). None if it is not stored."""
    conn = ledger.connection()
    try:
        cur, mark = conn.cursor(), ledger.mark
        org_id = ledger.org_id(cur, org)
        found = None if org_id is None else ledger.writer.decoded(cur, org_id, [uid]).get(uid)
        if found is None:
            return None
        sql = f"SELECT of_uid, kind, uid FROM corrections WHERE org_id = {mark} AND of_uid = {mark}"  # noqa: S608
        cur.execute(sql, (org_id, uid))
        out: dict[str, Any] = {**found, "corrected": _corrected([uid], cur.fetchall())[uid]}
        return out
    finally:
        conn.close()


def batch_page(ledger: Any, org: str, batch: str, after: str = "", limit: int = 1000) -> list[dict[str, Any]]:
    """A backfill batch's measurements a :class:`.store.Ledger` stores, after uid ``after``
    in uid order (code points), at most ``limit``, each with its ``corrected`` state."""
    conn = ledger.connection()
    try:
        cur, mark = conn.cursor(), ledger.mark
        org_id = ledger.org_id(cur, org)
        if org_id is None:
            return []
        page = (
            f"SELECT uid FROM batches WHERE org_id = {mark} AND batch = {mark} AND uid > {mark}"  # noqa: S608 - marks
            f" ORDER BY uid LIMIT {int(limit)}"
        )
        cur.execute(page, (org_id, batch, after))
        uids = [u for (u,) in cur.fetchall()]
        if not uids:
            return []
        cur.execute(
            f"SELECT of_uid, kind, uid FROM corrections WHERE org_id = {mark} AND of_uid IN ({page})",  # noqa: S608
            (org_id, org_id, batch, after),
        )
        corrected = _corrected(uids, cur.fetchall())
        found = ledger.writer.decoded(cur, org_id, uids)
        return [{**found[u], "corrected": corrected[u]} for u in uids if u in found]
    finally:
        conn.close()


def _corrected(uids: list[str], rows: list[tuple[str, str, str]]) -> dict[str, dict[str, str | None]]:
    out: dict[str, dict[str, str | None]] = {u: {"reversed_by": None, "replaced_by": None} for u in uids}
    for of, kind, uid in rows:
        if of in out and kind in _STATE:
            out[of][_STATE[kind]] = uid
    return out
