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
from typing import Literal

from pydantic import Field, field_validator, model_validator

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
    """Everything the ledger's signals need from its configuration."""

    webhooks: WebhooksSettings = Field(default_factory=WebhooksSettings)
    trends: TrendSettings = Field(default_factory=TrendSettings)
