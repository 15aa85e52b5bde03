"""The retry predicate, the backoff schedule and the configuration: pure, table-driven."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from meterkit_agent.signals import SecretMissing, SignalsSettings, WebhookConfig, WebhooksSettings
from meterkit_agent.signals.settings import RetrySchedule
from meterkit_agent.signals.webhooks import classify, next_delay_ms, retry_after_ms


@pytest.mark.parametrize(
    ("status", "acknowledged"),
    [
        (200, True),
        (202, True),
        (204, True),
        (299, True),
        (301, False),
        (400, False),
        (404, False),
        (410, False),
        (429, False),
        (500, False),
        (503, False),
    ],
)
def test_only_a_2xx_acknowledges(status: int, acknowledged: bool) -> None:
    assert classify(status) is acknowledged


SCHEDULE = RetrySchedule(initial_interval_millis=100, max_interval_millis=1000, jitter_millis=50)


@pytest.mark.parametrize(
    ("failures", "jitter", "retry_after", "delay"),
    [
        (1, 0.0, None, 100),
        (2, 0.0, None, 200),
        (3, 0.0, None, 400),
        (4, 0.0, None, 800),
        (5, 0.0, None, 1000),  # capped
        (500, 0.0, None, 1000),  # no overflow however long it fails
        (1, 0.5, None, 125),  # plus up to jitter_millis
        (1, 0.0, 30_000, 30_000),  # never sooner than Retry-After
        (1, 0.0, 10**9, 3_600_000),  # ... up to max_retry_after_millis
        (4, 0.0, 10, 800),
    ],
)
def test_backoff_schedule(failures: int, jitter: float, retry_after: int | None, delay: int) -> None:
    assert next_delay_ms(failures, SCHEDULE, retry_after, lambda: jitter) == delay


@pytest.mark.parametrize(
    ("header", "ms"),
    [
        (None, None),
        ("", None),
        ("7", 7000),
        ("soon", None),
        ("Thu, 01 Jan 2026 00:00:10 GMT", 10_000),
        ("Wed, 31 Dec 2025 23:59:00 GMT", 0),
    ],
)
def test_retry_after(header: str | None, ms: int | None) -> None:
    assert retry_after_ms(header, now=1767225600.0) == ms


def test_the_secret_comes_from_the_environment_and_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = WebhookConfig(name="crm", url="https://example.test/hook", secret_env="CRM_HOOK_SECRET")
    monkeypatch.delenv("CRM_HOOK_SECRET", raising=False)
    with pytest.raises(SecretMissing, match="CRM_HOOK_SECRET"):
        hook.secret()
    monkeypatch.setenv("CRM_HOOK_SECRET", "s3cr3t-value")
    assert hook.secret() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(hook) + str(hook.model_dump())


@pytest.mark.parametrize(
    ("doc", "complaint"),
    [
        ({"endpoints": [{"name": "a", "url": "ftp://x", "secret_env": "S"}]}, "http"),
        ({"endpoints": [{"name": "a", "url": "http://x", "secret_env": "not a name"}]}, "environment variable"),
        ({"endpoints": [{"name": "a", "url": "http://x", "secret_env": "S", "events": ["usage_dip"]}]}, "usage_dip"),
        ({"endpoints": [{"name": "a", "url": "http://x", "secret_env": "S"}] * 2}, "unique"),
        ({"endpoints": [{"name": "a", "url": "http://x", "secret_env": "S", "secret": "x"}]}, "secret"),
        ({"lease_millis": 5000, "endpoints": [{"name": "a", "url": "http://x", "secret_env": "S"}]}, "lease_millis"),
    ],
)
def test_bad_settings_are_refused(doc: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        WebhooksSettings.model_validate(doc)


def test_events_filter_and_trend_defaults() -> None:
    hook = WebhookConfig(name="a", url="http://x", secret_env="S", events=["usage_drop", "usage_spike"])
    assert hook.wants("usage_drop") and not hook.wants("cap_threshold")
    assert WebhookConfig(name="b", url="http://x", secret_env="S").wants("band_entered")
    settings = SignalsSettings.model_validate({"trends": {"bucket": "hour", "window": 24, "factor": "2.5"}})
    assert settings.trends.window == 24 and str(settings.trends.factor) == "2.5"
    with pytest.raises(ValidationError):
        SignalsSettings.model_validate({"trends": {"factor": 1}})
