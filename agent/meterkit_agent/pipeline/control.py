"""The SDKs' control records, checked before the agent believes them.

A control frame carries what the SDK counted: a ``tally`` of what it recorded per meter,
account and hour, and ``losses`` by reason. Reconciliation is built on these figures, so
one with a wrong shape (a count that is not a whole number, an entry that is not a
mapping, an unknown type) is quarantined: kept in the dead-letter store with the reason,
reported, and never allowed to stop delivery.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError

Count = Annotated[StrictInt, Field(ge=0)]


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


_CONTROL: TypeAdapter[Tally | Losses] = TypeAdapter(Annotated[Tally | Losses, Field(discriminator="type")])


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
