"""The Celery integration, with a real Celery app running its tasks eagerly."""

from __future__ import annotations

from typing import Any

import celery

import meterkit
from meterkit.integrations.celery import instrument_celery
from meterkit.testing import Captured

from .conftest import by_meter


def make_app() -> Any:
    app = celery.Celery("metered", broker="memory://")
    app.conf.task_always_eager = True
    instrument_celery(app, "api_calls", account="account", measure={"calls": 1}, outcome="outcome")

    @app.task(name="download")
    def download(size: int, *, account: str) -> int:
        meterkit.record("downloads", measure={"bytes": size})  # the task's account, from the scope
        return size

    @app.task(name="fail")
    def fail(*, account: str) -> None:
        raise RuntimeError("boom")

    @app.task(name="limited")
    def limited(*, account: str) -> None:
        raise meterkit.LimitExceeded(meterkit.Decision(False, 0, 1.5, "rate limited", False, "test"))

    @app.task(name="again", bind=True, max_retries=0)
    def again(self: Any, *, account: str) -> None:
        raise self.retry(countdown=0, max_retries=1) if self.request.retries == 0 else RuntimeError("gave up")

    return app


def test_celery_tasks_are_metered_in_one_line(captured: Captured) -> None:
    app = make_app()
    assert app.tasks["download"].delay(4096, account="acme").get() == 4096
    for name in ("fail", "limited"):
        result = app.tasks[name].delay(account="acme")
        assert result.failed()
    app.tasks["again"].delay(account="globex")
    calls = by_meter(captured, "api_calls")
    assert [(m["account"], m["other"]["outcome"]) for m in calls[:3]] == [
        ("acme", "ok"),
        ("acme", "error"),
        ("acme", "limited"),  # rebuilt by Celery as a plain MeterkitError, still known as a limit
    ]
    # The run that asked for a retry and the retry (same task id, run eagerly) that failed for good.
    assert sorted((m["account"], m["other"]["outcome"]) for m in calls[3:]) == [
        ("globex", "error"),
        ("globex", "retry"),
    ]
    assert [(m["account"], m["measure"]) for m in by_meter(captured, "downloads")] == [("acme", {"bytes": 4096})]
