"""The SDKs' control records, checked before the agent believes them.

A control frame carries what the SDK counted: a ``tally`` of what it recorded per meter,
account and hour, and ``losses`` by reason. Reconciliation is built on these figures, so
one with a wrong shape (a count that is not a whole number, an entry that is not a
mapping, an unknown type) is quarantined: kept in the dead-letter store with the reason,
reported, and never allowed to stop delivery.

A ``correction`` record says who corrected which measurements, when and why (``meterkit
correct``, ``meterkit backfill revert``): the audit journal keeps it as the auditor's
answer to "who changed this bill", so it is believed only with a reason and an author
that say something and hold no control character (a line feed would forge a line where a
person reads the journal), an instant, uids that obey the SDK's uid rules and a batch id
that obeys its batch rules (:mod:`meterkit._corrections`, :mod:`meterkit._model`: the
checks the writer passed, not a second copy of them). Its ``of`` holds at most
:data:`MAX_CORRECTED_PER_RECORD` uids (the writer splits beyond); ``uids``, what it
writes, at most two per corrected measurement (a reversal and a replacement).

An ``erasure`` record (``meterkit privacy erase``) says who erased a person, when and why,
and which measurements were rewritten; the person is named by a pseudonym only (a record
whose ``subject_hash`` is not one is quarantined, so a raw value cannot be journaled by
mistake). A ``retention`` record says a retention pass ran, with its settings and what it
aged. Both are journaled as they arrive (docs/audit-journal.md, docs/privacy.md).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from meterkit._corrections import MAX_UIDS_PER_CONTROL, check_batch, said_problem
from meterkit._errors import MeasurementError
from meterkit._model import uid_problem
from meterkit._timefmt import parse_ts

Count = Annotated[StrictInt, Field(ge=0)]
#: uids a correction record may correct (contract: the writer splits a longer list)
MAX_CORRECTED_PER_RECORD = MAX_UIDS_PER_CONTROL


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")  # a newer SDK may add keys; the figures must be right


class TallyEntry(_Record):
    meter: StrictStr
    account: StrictStr
    hour: StrictStr
    count: Count
    sums: dict[StrictStr, StrictInt | StrictFloat] = Field(default_factory=dict)


class Tally(_Record):
    type: Literal["tally"]
    entries: list[TallyEntry]


class LossEntry(_Record):
    reason: StrictStr
    meter: StrictStr
    account: StrictStr | None = None
    count: Count


class Losses(_Record):
    type: Literal["losses"]
    at: StrictStr | None = None
    entries: list[LossEntry]


def _uid(value: str) -> str:
    found = uid_problem(value, None)
    if found is not None:
        raise ValueError(f"not a uid: {found.problem.message}")
    return value


def _batch(value: str) -> str:
    try:
        check_batch(value)
    except MeasurementError as exc:
        raise ValueError(exc.problem.message) from None
    return value


def _said(value: str) -> str:
    why = said_problem(value, "it")
    if why is not None:
        raise ValueError(why)
    return value


def _instant(value: str) -> str:
    parse_ts(value)  # ValueError names what is wrong with it
    return value


Uid = Annotated[StrictStr, AfterValidator(_uid)]
Said = Annotated[StrictStr, AfterValidator(_said)]


class Correction(_Record):
    """Who corrected what, when and why: written beside the reversals and replacements."""

    type: Literal["correction"]
    id: Said
    action: Literal["cancel", "amend", "revert"]
    reason: Said
    by: Said
    at: Annotated[StrictStr, AfterValidator(_instant)]
    of: list[Uid] = Field(min_length=1, max_length=MAX_CORRECTED_PER_RECORD)
    uids: list[Uid] = Field(min_length=1, max_length=2 * MAX_CORRECTED_PER_RECORD)
    batch: Annotated[StrictStr, AfterValidator(_batch)] | None = None


def _pseudonym(value: str) -> str:
    if not _PSEUDONYM.match(value):
        raise ValueError("not a pseudonym (<key id>:<64 hex digits>); the raw value is never journaled")
    return value


_PSEUDONYM = re.compile(r"[A-Za-z][A-Za-z0-9]{0,15}:[0-9a-f]{64}\Z")
Ident = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Instant = Annotated[StrictStr, AfterValidator(_instant)]


class Erasure(_Record):
    """A person erased from the ledger's per-person detail (``meterkit privacy erase``):
    named by a pseudonym under the newest key, never by the raw value; ``uids`` the
    measurements rewritten (at most :data:`MAX_CORRECTED_PER_RECORD` a record: a longer
    erasure writes several records with one ``id``)."""

    type: Literal["erasure"]
    id: Ident
    reason: Said
    by: Said
    at: Instant
    subject_hash: Annotated[StrictStr, AfterValidator(_pseudonym)]
    uids: list[Uid] = Field(max_length=MAX_CORRECTED_PER_RECORD)


class Retention(_Record):
    """A retention pass (``meterkit privacy retain``): its settings and what it aged."""

    type: Literal["retention"]
    id: Ident
    by: Said
    at: Instant
    per_person_days: Count
    billing_years: Annotated[StrictInt, Field(ge=1)]
    cutoff: Instant
    rows: Count
    beyond_billing_years: Count = 0


_CONTROL: TypeAdapter[Tally | Losses | Correction | Erasure | Retention] = TypeAdapter(
    Annotated[Tally | Losses | Correction | Erasure | Retention, Field(discriminator="type")]
)


def control_problem(body: Any) -> str | None:
    """Why a control record cannot be believed, or None if it can."""
    try:
        _CONTROL.validate_python(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return f"{where}: {first['msg']}{more}" if where else f"{first['msg']}{more}"
    return None
