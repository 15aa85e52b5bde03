"""What the hot path queues, and what the flusher makes of one measurement.

``Client.record`` queues a measurement as :data:`~meterkit._frames.ROW_SIZE` consecutive
slots of the flusher's deque (``_batch``'s ``stride``), in the batch-frame row layout
(``_frames``): a *head*, meter, account and the eight categories (a dict, or ``None``).
The head says what it is:

- an ``int``, the time in nanoseconds: a **plain row**. Nothing else is needed to frame
  it, so the production flusher writes it as it is;
- a :class:`Rare`: the time and what needs the flusher's work first: a caller's ``ts``,
  ``ets`` or ``uid``, or fields inherited from ``meterkit.context`` (the scope) and
  OpenTelemetry Baggage (the context captured at record time);
- a ``dict``: a **wire measurement**, already validated (strict mode, sync durability
  when the sink refused a write, backfill); the other slots are ``None``.

:func:`frame_row` turns a rare one into a batch-frame row, checking what it adds;
:func:`to_wire` turns any into a validated wire measurement (strict mode, a sink that
keeps wire measurements such as ``meterkit.testing``'s). A module of its own so that
``_flusher`` (the thread, the sink, the losses) and ``_framer`` (a production batch)
share it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._frames import ROW_ACCOUNT, ROW_FIELDS, ROW_METER, ROW_SIZE, ROW_TS, ROW_UID
from ._limits import check_ts, problem
from ._model import CATEGORIES, build, uid_problem
from ._otel_context import extract, placed
from ._scope import EMPTY, SCOPED_CATEGORIES, Scope

if TYPE_CHECKING:
    from ._catalog import Catalog

Measurement = dict[str, Any]
_INDEX = {category: i for i, category in enumerate(SCOPED_CATEGORIES)}  # in a row's fields


class Rare:
    """The head of a row the flusher must finish: see the module docstring."""

    __slots__ = ("ets", "now", "otel", "scope", "ts", "uid")

    def __init__(self, now: int, ts: Any, ets: Any, uid: Any, scope: Scope, otel: Any) -> None:
        self.now = now
        self.ts = ts
        self.ets = ets
        self.uid = uid
        self.scope = scope
        self.otel = otel


#: The slots after a wire measurement's head.
PADDING = (None,) * (ROW_SIZE - 1)


def _label(meter: object) -> str | None:
    return meter if isinstance(meter, str) else None


def account_and_fields(row: Sequence[Any], catalog: Catalog | None) -> tuple[Any, list[Any]]:
    """A queued row's account and its eight categories, with what it inherits merged in."""
    head, account, values = row[ROW_TS], row[ROW_ACCOUNT], list(row[ROW_FIELDS])
    if isinstance(head, Rare) and (head.scope is not EMPTY or head.otel):  # an empty OTel Context is falsy
        account, values = _inherit(row[ROW_METER], account, values, head.scope, head.otel, catalog)
    return account, values


def frame_row(row: Sequence[Any], catalog: Catalog | None) -> list[Any]:
    """The batch-frame row, :data:`~meterkit._frames.WIDE`, for a queued row with a
    :class:`Rare` head: inherited fields merged, the caller's times checked and turned into
    instants (nanoseconds), the caller's uid checked. Raises :class:`MeasurementError`
    naming what is wrong with them."""
    head: Rare = row[ROW_TS]
    meter, now = row[ROW_METER], head.now
    account, values = account_and_fields(row, catalog)
    ts = now if head.ts is None else check_ts(_label(meter), "ts", head.ts, now)
    ets = None
    if head.ets is not None:
        ets = check_ts(_label(meter), "ets", head.ets, now)
        if ets < ts:
            raise problem("bad_timestamp", "ets (end) is before ts (start)", _label(meter), "ets")
    if head.uid is not None:
        found = uid_problem(head.uid, _label(meter))
        if found is not None:
            raise found
    return [ts, meter, account, *values, ets, head.uid]


def meter_and_account(item: Any) -> tuple[Any, Any]:
    """Whose a queued row (or a wire measurement) is, for counting it as lost."""
    head = item if isinstance(item, dict) else item[ROW_TS]
    if isinstance(head, dict):
        return head.get("meter"), head.get("account")
    account = item[ROW_ACCOUNT]
    if account is None and isinstance(head, Rare) and head.scope is not EMPTY:
        account = head.scope.account
    return item[ROW_METER], account


def to_wire(row: Sequence[Any], catalog: Catalog | None, uid: str) -> Measurement:
    """The validated wire measurement for a queued row (one with a dict head is one
    already), with ``uid`` unless the caller gave one. Raises :class:`MeasurementError`."""
    head = row[ROW_TS]
    if isinstance(head, dict):
        return head
    ts = ets = None
    now = head
    if isinstance(head, Rare):
        ts, ets, now = head.ts, head.ets, head.now
        if head.uid is not None:
            uid = head.uid
    account, values = account_and_fields(row, catalog)
    return build(row[ROW_METER], account, now, uid, values, ets=ets, catalog=catalog, now_ns=now, user_ts=ts)


def raw(row: Sequence[Any], catalog: Catalog | None) -> dict[str, Any]:
    """The measurement as it was checked, for the rejected-measurements file: the caller's
    fields with those it inherited from ``meterkit.context`` and Baggage, so the field
    named as the reason is in it. ``row`` is a queued row or a batch-frame row."""
    head = row[ROW_TS]
    if isinstance(head, dict):
        return head
    account, values = account_and_fields(row, catalog)
    out: dict[str, Any] = {"meter": row[ROW_METER], "account": account}
    for category, given in zip(CATEGORIES, values, strict=True):
        if given:
            out[category] = given
    if isinstance(head, Rare):
        for key in ("ts", "ets", "uid"):
            if getattr(head, key) is not None:
                out[key] = getattr(head, key)
    elif len(row) > ROW_UID and row[ROW_UID] is not None:
        out["uid"] = row[ROW_UID]
    return out


def _inherit(
    meter: Any, account: Any, values: list[Any], scope: Scope, otel: Any, catalog: Catalog | None
) -> tuple[Any, list[Any]]:
    """Account and fields from ``meterkit.context`` (the scope) and then Baggage, below what
    the caller passed. With a catalog, an inherited field fills only a meter that declares
    it, in the category the catalog gives it; the others are left out, not refused. What
    the caller passed is not filtered: validation (``build``, or the agent's) checks it,
    so a field the meter lacks stays an error there. The hot path captured the scope and
    the OTel context; this is the flusher's work."""
    declared: Mapping[str, str] | None = None
    if catalog is not None:
        known = catalog.meters.get(meter) if isinstance(meter, str) else None
        declared = known.field_categories if known is not None else {}
    if scope is not EMPTY:  # first: a field the scope sets is not overwritten by Baggage
        if account is None:
            account = scope.account
        for category in SCOPED_CATEGORIES:
            inherited = getattr(scope, category)
            if inherited:
                _fill(values, category, inherited, declared)
    if otel:
        baggage_account, fields = extract(otel)
        if account is None:
            account = baggage_account
        for category, inherited in fields.items():
            _fill(values, category, inherited, declared)
    return account, values


def _fill(values: list[Any], category: str, inherited: Mapping[str, Any], declared: Mapping[str, str] | None) -> None:
    """Merge one category of inherited fields below what ``values`` holds already."""
    if declared is not None:
        for code in inherited:
            if declared.get(code) != category:
                # Not all declared here: keep the declared ones, each in its declared category.
                for where, fields in placed({category: inherited}, declared).items():
                    _fill(values, where, fields, None)
                return
    i = _INDEX[category]
    values[i] = {**inherited, **values[i]} if values[i] else dict(inherited)
