"""Metering from OpenTelemetry spans, with no code changes (public API).

::

    from opentelemetry.sdk.trace import TracerProvider
    from meterkit.otel import UsageSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(UsageSpanProcessor.from_file("meters.yaml"))

Rules live under ``span_rules:`` in ``meters.yaml`` (or any YAML file)::

    span_rules:
      - meter: api_calls
        match:
          kind: SERVER                       # INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER
          name: "GET *"                      # glob on the span name
          attributes: {http.route: "/download*"}   # globs on span attributes
        account: {attribute: http.request.header.x_account}   # or {baggage: meterkit.account}
        fields: {what.endpoint: http.route, who.user: enduser.id}   # category.code: attribute
        measure: {calls: 1}                  # constant Measure values
        duration: seconds                    # span duration, in seconds, into this Measure field
        errors: count                        # count (default), skip, or a field: other.status

A rule without ``account`` takes the baggage entry ``meterkit.account`` (copied onto the
span when it starts, so a gateway's baggage reaches every service's spans).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from opentelemetry import baggage
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._api import get_client
from ._client import Client
from ._errors import ConfigError
from ._guard import background_error
from ._model import NUMERIC_CATEGORIES, STRING_CATEGORIES
from ._timefmt import iso_ms

ACCOUNT_ATTRIBUTE = "meterkit.account"


class _Match(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    kind: Literal["INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"] | None = None
    attributes: dict[str, str] = {}


class _AccountSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attribute: str | None = None
    baggage: str | None = None


class SpanRule(BaseModel):
    """One rule: which spans, which meter, which fields."""

    model_config = ConfigDict(extra="forbid")
    meter: str
    match: _Match = _Match()
    account: _AccountSource = Field(default_factory=lambda: _AccountSource(baggage="meterkit.account"))
    fields: dict[str, str] = {}
    measure: dict[str, float] = {}
    duration: str | None = None
    errors: str = "count"

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: dict[str, str]) -> dict[str, str]:
        for target in v:
            category, _, code = target.partition(".")
            if category not in (*STRING_CATEGORIES, *NUMERIC_CATEGORIES) or not code:
                raise ValueError(f"{target!r}: fields are named category.code, e.g. what.endpoint")
        return v

    @field_validator("errors")
    @classmethod
    def _errors(cls, v: str) -> str:
        if v not in ("count", "skip"):
            category, _, code = v.partition(".")
            if category not in STRING_CATEGORIES or not code:
                raise ValueError("errors is count, skip, or a string field such as other.status")
        return v

    def matches(self, span: ReadableSpan) -> bool:
        m = self.match
        if m.kind is not None and span.kind != SpanKind[m.kind]:
            return False
        if m.name is not None and not fnmatch.fnmatchcase(span.name, m.name):
            return False
        attrs = span.attributes or {}
        return all(
            key in attrs and fnmatch.fnmatchcase(str(attrs[key]), pattern) for key, pattern in m.attributes.items()
        )


def _scalar(value: Any) -> Any:
    """Span attributes may be sequences (captured headers are); a field takes the first."""
    if isinstance(value, list | tuple):
        return value[0] if value else None
    return value


def load_rules(path: str | Path) -> list[SpanRule]:
    """Read ``span_rules:`` from a YAML file. Raises :class:`ConfigError` naming each problem."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read span rules: {exc}") from None
    raw = doc.get("span_rules") if isinstance(doc, dict) else None
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: no 'span_rules:' list")
    rules, problems = [], []
    for i, item in enumerate(raw, start=1):
        try:
            rules.append(SpanRule.model_validate(item))
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"])
                problems.append(f"{path}: span_rules[{i}].{where}: {str(err['msg']).removeprefix('Value error, ')}")
    if problems:
        raise ConfigError("\n".join(problems))
    return rules


class UsageSpanProcessor(SpanProcessor):
    """Turns finished spans into measurements by declarative rules. Never raises into the
    tracer: a span that cannot be metered is counted and logged once by the client."""

    def __init__(self, rules: list[SpanRule], client: Client | None = None) -> None:
        self.rules = rules
        self.client = client

    @classmethod
    def from_file(cls, path: str | Path, client: Client | None = None) -> UsageSpanProcessor:
        return cls(load_rules(path), client)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            for key, value in baggage.get_all(parent_context).items():
                if key.startswith("meterkit.") and isinstance(value, str):
                    span.set_attribute(key, value)
        except Exception as exc:
            background_error("UsageSpanProcessor.on_start", exc)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            for rule in self.rules:
                if rule.matches(span):
                    self._record(rule, span)
        except Exception as exc:
            background_error("UsageSpanProcessor.on_end", exc)

    def _record(self, rule: SpanRule, span: ReadableSpan) -> None:
        failed = span.status.status_code == StatusCode.ERROR
        if failed and rule.errors == "skip":
            return
        attrs: Mapping[str, Any] = span.attributes or {}
        values: dict[str, dict[str, Any]] = {c: {} for c in (*STRING_CATEGORIES, *NUMERIC_CATEGORIES)}
        values["measure"].update(rule.measure)
        for target, attribute in rule.fields.items():
            value = _scalar(attrs.get(attribute))
            if value is not None:
                category, _, code = target.partition(".")
                values[category][code] = value if category in NUMERIC_CATEGORIES else str(value)
        if rule.duration and span.start_time is not None and span.end_time is not None:
            values["measure"][rule.duration] = (span.end_time - span.start_time) / 1e9
        if rule.errors not in ("count", "skip"):
            category, _, code = rule.errors.partition(".")
            values[category][code] = "error" if failed else "ok"
        source = rule.account
        account = _scalar(
            attrs.get(source.attribute) if source.attribute else attrs.get(source.baggage or ACCOUNT_ATTRIBUTE)
        )
        client = self.client or get_client()
        client.record(
            rule.meter,
            account=str(account) if account is not None else None,
            # A span's time is integer nanoseconds; record() takes no bare numbers (whose unit
            # would be a guess), so it is given as the wire's ISO 8601 text.
            ts=iso_ms(span.start_time) if span.start_time is not None else None,
            who=values["who"] or None,
            what=values["what"] or None,
            where=values["where"] or None,
            other=values["other"] or None,
            metadata=values["metadata"] or None,
            measure=values["measure"] or None,
            income=values["income"] or None,
            cost=values["cost"] or None,
        )

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        client = self.client or get_client()
        return client.flush(timeout_millis / 1000.0)


__all__ = ["SpanRule", "UsageSpanProcessor", "load_rules"]
