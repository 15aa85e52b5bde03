"""Privacy by design: what the catalog asks for a field's value, applied before it is written.

The catalog says it (``docs/privacy.md``): a data field may have ``privacy: pseudonymize``
(its value becomes a keyed pseudonym, ``_pseudonyms``), ``drop`` (the value never leaves
the application) or ``keep`` (the default); a meter may have ``pii: reject | redact |
pseudonymize | allow`` (default ``redact``), the policy for text values that look like
e-mail addresses, card numbers, IP addresses or phone numbers (``_pii``). Fields that are
pseudonymized or dropped are protected already, so the guard looks at the others.

Everything that writes measurements applies one :class:`Privacy` before the values touch
disk: the SDK's flusher (batch frames, strict and sync paths, backfill, corrections,
the rejected-measurements file) and the agent's HTTP and OTLP receivers. In production
mode the flusher also drops fields the catalog does not declare for the meter (only
declared fields leave the application); strict mode refuses them, as before.

Why ``redact`` by default: ``reject`` loses billable usage for a mistake in a free-text
field, ``allow`` writes the mistake to every backend; ``redact`` keeps the measurement and
its numbers, replaces the value with ``[redacted:email]`` (and so on), and counts it.

Cost: a batch whose text values the guard's screen clears, of meters with nothing to
pseudonymize or drop, is checked column by column at C speed (``rows``); only rows that
need a change are rebuilt.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import le
from typing import TYPE_CHECKING, Any

import orjson

from . import _guard
from ._errors import ConfigError, MeasurementError
from ._limits import problem
from ._model import CATEGORIES, STRING_CATEGORIES
from ._pii import detect, screen
from ._pseudonyms import Keyring, load_keyring
from ._timefmt import parse_ts

if TYPE_CHECKING:
    from ._catalog import Catalog, Meter

FIELD_PRIVACY = ("pseudonymize", "drop", "keep")
PII_POLICIES = ("reject", "redact", "pseudonymize", "allow")
DEFAULT_PII = "redact"
_FIRST = 3  # a row's first category slot (``_frames``)
_AT = {category: _FIRST + i for i, category in enumerate(CATEGORIES)}
_EMPTY: frozenset[str] = frozenset()


@dataclass(frozen=True)
class MeterPlan:
    """One meter's rules, by category: declared codes, codes to pseudonymize, to drop, to guard."""

    declared: Mapping[str, frozenset[str]]
    pseudonymize: Mapping[str, frozenset[str]]
    drop: Mapping[str, frozenset[str]]
    guarded: Mapping[str, frozenset[str]]
    pii: str

    @property
    def plain(self) -> bool:
        """Nothing to pseudonymize or drop (the guard may still look)."""
        return not any(self.pseudonymize.values()) and not any(self.drop.values())


def meter_plan(meter: Meter) -> MeterPlan:
    pii = meter.pii or DEFAULT_PII
    by: dict[str, dict[str, set[str]]] = {k: {c: set() for c in CATEGORIES} for k in ("all", *FIELD_PRIVACY)}
    for f in meter.data_fields:
        by["all"][f.category.value].add(f.code)
        by[f.privacy or "keep"][f.category.value].add(f.code)

    def frozen(kind: str) -> dict[str, frozenset[str]]:
        return {c: frozenset(codes) for c, codes in by[kind].items()}

    guarded = {c: frozenset(by["keep"][c]) if pii != "allow" and c in STRING_CATEGORIES else _EMPTY for c in CATEGORIES}
    return MeterPlan(frozen("all"), frozen("pseudonymize"), frozen("drop"), guarded, pii)


def needs_key(catalog: Catalog) -> list[str]:
    """``meter`` or ``meter.category.code`` for each place the catalog asks for a pseudonym."""
    out = []
    for meter in catalog.meters.values():
        if meter.pii == "pseudonymize":
            out.append(meter.code)
        out += [f"{meter.code}.{f.category.value}.{f.code}" for f in meter.data_fields if f.privacy == "pseudonymize"]
    return out


Reject = Callable[[Sequence[Any], MeasurementError], None]


class Privacy:
    """A catalog's privacy rules with the keys they need. ``counts``: what was changed, by
    what (``redacted:email``, ``pseudonymized:ip``, ``dropped:undeclared_field``)."""

    def __init__(self, catalog: Catalog, keyring: Keyring | None) -> None:
        self.plans = {code: meter_plan(meter) for code, meter in catalog.meters.items()}
        self.keyring = keyring
        self.counts: Counter[str] = Counter()
        self.quiet = False  # the twin that scrubs refused records counts and logs nothing
        self._twin = copy.copy(self)
        self._twin.counts, self._twin.quiet = Counter(), True

    @classmethod
    def for_catalog(cls, catalog: Catalog | None, environ: Mapping[str, str] | None = None) -> Privacy | None:
        """The rules of ``catalog`` (None without one). Raises :class:`ConfigError` when the
        catalog asks for pseudonyms and no key is set, or the key setting is malformed."""
        if catalog is None:
            return None
        wanted = needs_key(catalog)
        keyring = load_keyring(environ) if wanted else None
        if wanted and keyring is None:
            shown = ", ".join(wanted[:5]) + (f" and {len(wanted) - 5} more" if len(wanted) > 5 else "")
            raise ConfigError(
                f"the catalog {catalog.source} asks for pseudonyms ({shown}) but no key is set: set "
                "METERKIT_PSEUDONYMIZATION_KEY or METERKIT_PSEUDONYMIZATION_KEY_FILE (see docs/privacy.md)"
            )
        return cls(catalog, keyring)

    # -- one measurement ---------------------------------------------------------------------

    def fields(
        self, meter: Any, values: Sequence[Any], ts_ns: int | None, *, undeclared: bool, lenient: bool = False
    ) -> list[Any]:
        """``values`` (the eight categories) as they may be written. ``undeclared``: drop fields
        the meter does not declare (else validation refuses them). Raises
        :class:`MeasurementError` (``pii_detected``) under ``pii: reject`` unless ``lenient``
        (a correction: its reversal must match what it reverses, so the value is redacted)."""
        plan = self.plans.get(meter) if type(meter) is str else None
        out = list(values)
        for i, category in enumerate(CATEGORIES):
            given = out[i]
            if given and type(given) is dict:
                out[i] = self._category(meter, plan, category, given, ts_ns, undeclared, lenient)
        return out

    def _category(
        self,
        meter: Any,
        plan: MeterPlan | None,
        category: str,
        given: dict[str, Any],
        ts_ns: int | None,
        undeclared: bool,
        lenient: bool,
    ) -> dict[str, Any] | None:
        text = category in STRING_CATEGORIES
        if plan is None:  # a meter the catalog lacks: validation refuses it; guard its text meanwhile
            if not text:
                return given
            declared, pseud, drop, guarded, pii = None, _EMPTY, _EMPTY, None, DEFAULT_PII
        else:
            declared, pseud, drop = plan.declared[category], plan.pseudonymize[category], plan.drop[category]
            guarded, pii = plan.guarded[category], plan.pii
        out: dict[str, Any] = {}
        changed = False
        for code, value in given.items():
            known = declared is None or code in declared
            if not known and undeclared:
                if not text:  # dropping a number would change what is billed, unseen
                    assert plan is not None  # only a known meter declares anything
                    raise _undeclared(meter, plan, category, code)
                self._note(meter, "dropped:undeclared_field", f"{category}.{code}")
                changed = True
                continue
            if code in drop:
                changed = True
                continue
            if code in pseud:
                new = self._pseudonym(meter, category, code, value, ts_ns)
            elif value is not None and text and pii != "allow" and (guarded is None or not known or code in guarded):
                new = self._guard(meter, category, code, value, pii, ts_ns, lenient)
            else:
                new = value
            changed = changed or new is not value
            out[code] = new
        return (out or None) if changed else given

    def _pseudonym(self, meter: Any, category: str, code: str, value: Any, ts_ns: int | None) -> Any:
        if value is None:
            return None
        if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
            value = str(int(value))  # as validation writes an int identifier
        if not isinstance(value, str):
            raise problem(
                "wrong_type",
                f"{category.upper()} field {code} is pseudonymized and takes text, got {type(value).__name__}"
                " (its value is not shown)",
                meter if type(meter) is str else None,
                f"{category}.{code}",
            )
        assert self.keyring is not None  # for_catalog refuses a catalog that needs one without it
        return self.keyring.pseudonymize(str.__str__(value), ts_ns)

    def _guard(
        self, meter: Any, category: str, code: str, value: Any, pii: str, ts_ns: int | None, lenient: bool
    ) -> Any:
        text = (
            value
            if type(value) is str
            else str(value)
            if isinstance(value, str | int) and not isinstance(value, bool)
            else None
        )
        if text is None or (self.keyring is not None and self.keyring.is_pseudonym(text)):
            return value
        kind = detect(text)
        if kind is None:
            return value
        if pii == "reject" and not lenient:
            self.counts["rejected:pii_detected"] += 1
            raise problem(
                "pii_detected",
                f"{category}.{code} looks like {'an' if kind in ('email', 'ip') else 'a'} {kind}; meter policy"
                " 'pii: reject' refuses it (its value is not shown)",
                meter if type(meter) is str else None,
                f"{category}.{code}",
            )
        if pii == "pseudonymize" and self.keyring is not None:
            self._note(meter, f"pseudonymized:{kind}", f"{category}.{code}")
            return self.keyring.pseudonymize(text, ts_ns)
        self._note(meter, f"redacted:{kind}", f"{category}.{code}")
        return f"[redacted:{kind}]"

    def _note(self, meter: Any, what: str, where: str) -> None:
        if self.quiet:
            return
        self.counts[what] += 1
        name = meter if type(meter) is str else "?"
        _guard.log_once(
            ("privacy", name, what, where),
            logging.WARNING,
            "meterkit: %s of meter %r: %s (counted; further ones are not logged)",
            where,
            name[:200],
            what,
        )

    def wire(self, m: dict[str, Any], *, undeclared: bool = False, lenient: bool = False) -> dict[str, Any]:
        """A wire measurement (validated or not) as it may be written; a new dict if anything changed."""
        if not any(type(m.get(c)) is dict and m[c] for c in CATEGORIES):
            return m
        values = [m.get(c) for c in CATEGORIES]
        ts_ns = self._wire_ts(m)
        fixed = self.fields(m.get("meter"), values, ts_ns, undeclared=undeclared, lenient=lenient)
        if all(a is b for a, b in zip(values, fixed, strict=True)):
            return m
        out = {k: v for k, v in m.items() if k not in CATEGORIES}
        for category, value in zip(CATEGORIES, fixed, strict=True):
            if value:
                out[category] = value
        return out

    def _wire_ts(self, m: Mapping[str, Any]) -> int | None:
        if self.keyring is None or self.keyring.single:
            return None
        try:
            return parse_ts(m.get("ts"))
        except (ValueError, TypeError):
            return None  # refused by validation anyway

    def scrub(self, record: dict[str, Any]) -> dict[str, Any]:
        """A refused measurement as the rejected-measurements file may keep it: never raises."""
        try:
            return self._twin.wire(record, lenient=True)  # counted as rejected already
        except MeasurementError:  # a pseudonymized field holding what is not text
            plan = self.plans.get(record.get("meter"))  # type: ignore[arg-type]
            protected = (
                {(c, code) for c in CATEGORIES for code in (plan.pseudonymize[c] | plan.drop[c])} if plan else set()
            )
            return {
                k: (
                    {code: v for code, v in val.items() if (k, code) not in protected}
                    if k in CATEGORIES and type(val) is dict
                    else val
                )
                for k, val in record.items()
            }

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def rows(self, flat: list[Any], width: int, reject: Reject) -> list[Any]:
        """:func:`private_rows` of this catalog's rules."""
        return private_rows(self, flat, width, reject)


# -- a production batch --------------------------------------------------------------------


def private_rows(privacy: Privacy, flat: list[Any], width: int, reject: Reject) -> list[Any]:
    """The flat batch-frame rows (``_frames``) as they may be written: undeclared fields
    dropped, pseudonyms made, the guard applied; a row the guard refuses goes to
    ``reject``. ``flat`` itself when nothing needs a change (the common case)."""
    meters = flat[1::width]
    plans: dict[Any, MeterPlan] = {}
    for meter in set(meters):
        plan = privacy.plans.get(meter)
        if plan is None or not plan.plain:  # an unknown meter, or values to change
            return _row_by_row(privacy, flat, width, reject)
        plans[meter] = plan
    try:
        columns = {c: column for c in CATEGORIES if any(column := flat[_AT[c] :: width])}
        if all(_declared(column, c, meters, plans) for c, column in columns.items()):
            texts = [v for c, v in columns.items() if c in STRING_CATEGORIES and _guards(c, plans)]
            if not texts or not screen(orjson.dumps(texts), sum(sum(map(len, filter(None, v))) for v in texts)):
                return flat
    except TypeError:  # not a dict, or a value JSON cannot carry: look row by row
        pass
    return _row_by_row(privacy, flat, width, reject)


def _row_by_row(privacy: Privacy, flat: list[Any], width: int, reject: Reject) -> list[Any]:
    out: list[Any] = []
    keyring = privacy.keyring
    ts_needed = keyring is not None and not keyring.single
    for i in range(0, len(flat), width):
        row = flat[i : i + width]
        ts = row[0] if ts_needed and type(row[0]) is int else None
        try:
            fixed = privacy.fields(row[1], row[_FIRST : _FIRST + len(CATEGORIES)], ts, undeclared=True)
        except MeasurementError as exc:
            reject(row, exc)
            continue
        out += row[:_FIRST]
        out += fixed
        out += row[_FIRST + len(CATEGORIES) :]
    return out


def _undeclared(meter: str, plan: MeterPlan, category: str, code: str) -> MeasurementError:
    """An undeclared number, refused with the reason validation gives it."""
    elsewhere = next((c for c, codes in plan.declared.items() if code in codes), None)
    if elsewhere is None:
        return problem("unknown_field", f"meter {meter!r} has no data field {code!r}", meter, f"{category}.{code}")
    return problem(
        "wrong_category",
        f"{code!r} is a {elsewhere.upper()} field of meter {meter!r}, not {category.upper()}",
        meter,
        f"{category}.{code}",
    )


def _guards(category: str, plans: dict[Any, MeterPlan]) -> bool:
    return any(p.guarded[category] for p in plans.values())


def _declared(column: list[Any], category: str, meters: list[Any], plans: dict[Any, MeterPlan]) -> bool:
    """Whether every code in this category column is declared for its row's meter, in
    C-level passes (one set union when the batch is one meter's)."""
    given = list(filter(None, column))
    if len(plans) == 1:
        return set().union(*given) <= next(iter(plans.values())).declared[category]
    allowed = [plans[m].declared[category] for m, c in zip(meters, column, strict=True) if c]
    return all(map(le, map(dict.keys, given), allowed))
