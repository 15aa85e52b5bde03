"""Backfill: historical measurements with deterministic uids, every bad row reported.

A uid is derived from the row so that running the same backfill twice can never double
count: from ``uid`` if the row has one, else from the value of ``key_field`` (a source
system's event id), else from the row's content. Two rows with identical content are the
same event under the last rule; give a key if your source has genuinely identical events.
A backfill's measurements may carry its ``batch`` id (not part of the uid), by which
``meterkit backfill revert`` finds and reverses them all.

Dependencies run one way: ``_client`` imports this module (``Client.submit_batch`` calls
:func:`submit_batch`, and returns the :class:`BatchResult` defined here); this module
never imports ``_client`` at run time, only for type hints.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from ._corrections import check_batch
from ._errors import MeasurementError, Problem
from ._model import CATEGORIES, build, problem

if TYPE_CHECKING:
    from ._client import Client

#: Namespace of backfill uids (uuid5): fixed forever, or re-runs would mint new uids.
BACKFILL_NAMESPACE = uuid.UUID("6f1c2a7e-3b0d-5d9a-9c41-8e5b7f1d2c30")
#: What ``submit_batch`` takes: mappings, or ``(line, mapping)`` pairs.
Rows = Iterable[Mapping[str, Any] | tuple[int, Any]]
_ALLOWED = {"uid", "meter", "account", "ts", "ets", *CATEGORIES}


class BatchResult:
    """What :meth:`Client.submit_batch` did: how many rows were accepted, which were not."""

    def __init__(self, accepted: int, problems: list[Problem]) -> None:
        self.accepted = accepted
        self.problems = problems

    @property
    def rejected(self) -> int:
        return len(self.problems)

    def __repr__(self) -> str:
        return f"BatchResult(accepted={self.accepted}, rejected={self.rejected})"


def derive_uid(meter: str, row: Mapping[str, Any], key_field: str | None) -> str:
    if key_field is not None:
        key = row.get(key_field)
        if key is None or key == "":
            raise problem("missing_key", f"row has no value for the key field {key_field!r}", meter, key_field)
        material = f"{meter}\x1fkey\x1f{key}"
    else:
        content = {k: v for k, v in row.items() if k != "uid"}
        material = f"{meter}\x1frow\x1f" + orjson.dumps(content, option=orjson.OPT_SORT_KEYS, default=str).decode()
    return str(uuid.uuid5(BACKFILL_NAMESPACE, material))


def validate_row(row: Mapping[str, Any], *, catalog: Any, key_field: str | None, now_ns: int) -> dict[str, Any]:
    """Turn one backfill row into a wire measurement, or raise :class:`MeasurementError`."""
    meter = row.get("meter")
    if catalog is not None and isinstance(meter, str) and meter not in catalog:
        # Named before the columns: a bare field code of an unknown meter is no column either,
        # and "unknown key(s)" would hide the one mistake behind every field of the row.
        raise problem("unknown_meter", f"meter {meter!r} is not in the catalog {catalog.source}", meter)
    extra = sorted(k for k in row if k not in _ALLOWED and k != key_field)
    if extra:
        raise problem(
            "unknown_column",
            f"unknown key(s) {', '.join(map(repr, extra))}; expected {sorted(_ALLOWED)}",
            meter if isinstance(meter, str) else None,
        )
    if row.get("ts") in (None, ""):
        raise problem(
            "missing_ts",
            "a backfilled measurement needs its own ts",
            meter if isinstance(meter, str) else None,
            "ts",
        )
    uid = row.get("uid") or derive_uid(str(meter), row, key_field)
    fields = [row.get(c) for c in CATEGORIES]
    for category, values in zip(CATEGORIES, fields, strict=True):
        if values is not None and not isinstance(values, Mapping):
            raise problem(
                "bad_shape",
                f"{category} must be a mapping of field code to value",
                meter if isinstance(meter, str) else None,
                category,
            )
    return build(
        meter,
        row.get("account"),
        now_ns,
        uid,
        fields,
        ets=row.get("ets") or None,
        catalog=catalog,
        now_ns=now_ns,
        user_ts=row["ts"],
    )


def submit_batch(
    client: Client,
    rows: Rows,
    *,
    key_field: str | None = None,
    batch: str | None = None,
) -> BatchResult:
    if batch is not None:
        check_batch(batch)
    problems: list[Problem] = []
    good: list[dict[str, Any]] = []
    accepted = 0
    now_ns = time.time_ns()
    for index, entry in enumerate(rows, start=1):
        line, row = entry if isinstance(entry, tuple) else (index, entry)
        try:
            if not isinstance(row, Mapping):
                raise problem("bad_shape", f"expected a mapping, got {type(row).__name__}")
            measurement = validate_row(row, catalog=client.catalog, key_field=key_field, now_ns=now_ns)
        except MeasurementError as exc:
            p = exc.problem
            problems.append(Problem(p.reason, p.message, meter=p.meter, field=p.field, line=line))
            continue
        if batch is not None:
            measurement["batch"] = batch
        good.append(measurement)
        if len(good) >= 1000:
            client._write_now(good)
            accepted += len(good)
            good = []
    if good:
        client._write_now(good)
        accepted += len(good)
    client.flush(timeout=60.0)
    return BatchResult(accepted, problems)
