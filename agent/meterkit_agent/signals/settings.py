"""The signals' configuration: webhook endpoints, their retry schedule, and the trend
detector's window and factor.

A webhook's secret is never written in the configuration: ``secret_env`` names the
environment variable that holds it (DESIGN.md §7: secrets never reach logs, argv or files
readable by others), read once when the sender starts. A missing variable is a
configuration error that names the variable, never a value.

Every duration carries its unit in its name, as the agent's other settings do.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from meterkit import CatalogError
from meterkit._yaml import LINE_KEY, load_yaml

from ..component import Settings

#: the kinds of event a webhook may ask for (``events: ["*"]`` is all of them)
KINDS = ("cap_threshold", "band_entered", "spend_threshold", "usage_drop", "usage_spike")

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,80}\Z")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


class SecretMissing(ValueError):
    """The environment variable a webhook's secret lives in is unset or empty."""


class RetrySchedule(Settings):
    """Exponential backoff with jitter between attempts to deliver one event to one
    endpoint: ``initial * 2**(attempt-1)``, at most ``max``, plus up to ``jitter`` at
    random; never sooner than the receiver's ``Retry-After``. Retried without limit: an
    event is kept until its endpoint acknowledges it."""

    initial_interval_millis: int = Field(5_000, gt=0)
    max_interval_millis: int = Field(3_600_000, gt=0)
    jitter_millis: int = Field(5_000, ge=0)
    #: a ``Retry-After`` longer than this is cut to it
    max_retry_after_millis: int = Field(3_600_000, gt=0)


class WebhookConfig(Settings):
    """One endpoint. ``name`` identifies it in the outbox, so renaming it starts its
    deliveries afresh; keep it stable."""

    name: str
    url: str
    secret_env: str
    events: list[str] = Field(default_factory=lambda: ["*"])
    timeout_millis: int = Field(10_000, gt=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("name must be 1-80 letters, digits or _.:-")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return v

    @field_validator("secret_env")
    @classmethod
    def _secret_env(cls, v: str) -> str:
        if not _ENV_NAME.match(v):
            raise ValueError("secret_env must be the name of an environment variable, e.g. METERKIT_WEBHOOK_SECRET")
        return v

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        unknown = [e for e in v if e != "*" and e not in KINDS]
        if unknown:
            raise ValueError(f"unknown event kind(s) {unknown}; known: {', '.join(KINDS)} or *")
        return v

    def wants(self, kind: str) -> bool:
        """Whether events of ``kind`` go to this endpoint."""
        return "*" in self.events or kind in self.events

    def secret(self) -> str:
        """The signing secret, from the environment. Raises :class:`SecretMissing`
        naming the variable (never a value)."""
        value = os.environ.get(self.secret_env, "")
        if not value:
            raise SecretMissing(f"webhook {self.name!r}: environment variable {self.secret_env} is unset or empty")
        return value


class WebhooksSettings(Settings):
    """The sender: its endpoints, how often it looks for due deliveries, how many it
    attempts per look, and how long a claimed delivery stays another sender's."""

    endpoints: list[WebhookConfig] = Field(default_factory=list)
    retry: RetrySchedule = Field(default_factory=RetrySchedule)
    poll_interval_millis: int = Field(1_000, gt=0)
    batch_size: int = Field(100, gt=0, le=10_000)
    #: a sender that dies while sending leaves its claim; another takes it over after this
    #: long (it must exceed every endpoint's timeout)
    lease_millis: int = Field(60_000, gt=0)

    @field_validator("endpoints")
    @classmethod
    def _unique(cls, v: list[WebhookConfig]) -> list[WebhookConfig]:
        names = [e.name for e in v]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"webhook names must be unique; repeated: {repeated}")
        return v

    @model_validator(mode="after")
    def _lease_outlasts_requests(self) -> WebhooksSettings:
        longest = max((e.timeout_millis for e in self.endpoints), default=0)
        if self.lease_millis <= longest:
            raise ValueError(
                f"lease_millis ({self.lease_millis}) must exceed every endpoint's timeout_millis ({longest})"
            )
        return self


class TrendSettings(Settings):
    """Drops and spikes: a bucket's usage against the median of the ``window`` buckets
    before it. A drop is usage below ``median / factor``; a spike, above
    ``median * factor``."""

    bucket: Literal["hour", "day"] = "day"
    window: int = Field(7, ge=1, le=1000)
    factor: Decimal = Field(Decimal(3), gt=1)


class SignalsSettings(Settings):
    """Everything the ledger's signals need from its configuration (``meterkit ledger
    serve --signals signals.yaml``)."""

    webhooks: WebhooksSettings = Field(default_factory=WebhooksSettings)
    trends: TrendSettings = Field(default_factory=TrendSettings)
    #: how often each ledger process evaluates every account's cap thresholds again (what
    #: a process that died between storing usage and evaluating it left undone) and looks
    #: for a closed trend bucket
    sweep_interval_millis: int = Field(60_000, gt=0)


class SignalsFileError(ValueError):
    """A signals file that cannot be used; the message names the file and every problem."""


def load_signals(path: str | Path) -> SignalsSettings:
    """Read and check a signals file (YAML, the catalog's loader: no anchors, no repeated
    keys). Raises :class:`SignalsFileError` naming each problem, and each webhook whose
    secret variable is unset or empty (by the variable's name, never a value)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SignalsFileError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        doc, problems = load_yaml(text, str(p))
    except CatalogError as exc:
        raise SignalsFileError("\n".join(str(problem) for problem in exc.problems)) from None
    if problems:
        raise SignalsFileError("\n".join(str(problem) for problem in problems))
    try:
        settings = SignalsSettings.model_validate(_plain(doc) if doc is not None else {})
    except ValidationError as exc:
        lines = [f"{p}: {'.'.join(str(x) for x in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise SignalsFileError("\n".join(lines)) from None
    missing = []
    for endpoint in settings.webhooks.endpoints:
        try:
            endpoint.secret()
        except SecretMissing as exc:
            missing.append(f"{p}: {exc}")
    if missing:
        raise SignalsFileError("\n".join(missing))
    return settings


def _plain(value: Any) -> Any:
    """The document without the line numbers the loader records in every mapping."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != LINE_KEY}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
