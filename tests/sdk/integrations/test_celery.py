"""The Celery integration, with a real Celery app running its tasks eagerly."""

from __future__ import annotations

import logging
from typing import Any

import celery

import meterkit
from meterkit.integrations.celery import HEADER, instrument_celery
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


def test_the_publishers_context_travels_to_a_real_worker_in_the_tasks_headers(captured: Captured) -> None:
    """Sent through the broker (no eager shortcut): the account reaches the worker only in
    the message's headers, which ``before_task_publish`` filled from the sender's scope."""
    from celery.contrib.testing.worker import start_worker
    from celery.signals import before_task_publish

    app = celery.Celery("worker", broker="memory://", backend="cache+memory://")
    app.conf.broker_transport_options = {"polling_interval": 0.01}
    app.conf.worker_hijack_root_logger = False  # leave the root logger (pytest's caplog) as it is
    instrument_celery(app, "api_calls", account="account", measure={"calls": 1}, outcome="outcome")
    published: list[tuple[str, Any]] = []

    def seen(sender: str = "", headers: dict[str, Any] | None = None, **_: Any) -> None:
        published.append((sender, (headers or {}).get(HEADER)))

    @app.task(name="upload")
    def upload(size: int, account: str | None = None) -> None:
        meterkit.record("downloads", measure={"bytes": size})  # the account of the scope carried

    before_task_publish.connect(seen)  # after instrument_celery's own receiver: sees its header
    root_level = logging.getLogger().level  # the worker sets its log level on the root logger
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10, loglevel=root_level):
            with meterkit.context(account="acme", what={"endpoint": "/upload"}):
                sent = upload.delay(10)
                explicit = upload.delay(20, account="globex")  # the extractor's account wins
            for result in (sent, explicit):
                result.get(timeout=30)
            app.send_task("unknown-elsewhere")  # outside a scope: nothing is added
    finally:
        before_task_publish.disconnect(seen)
        logging.getLogger().setLevel(root_level)
    assert published == [
        ("upload", {"account": "acme", "what": {"endpoint": "/upload"}}),
        ("upload", {"account": "acme", "what": {"endpoint": "/upload"}}),
        ("unknown-elsewhere", None),
    ]
    calls = by_meter(captured, "api_calls")
    assert sorted((m["account"], m["what"].get("endpoint"), m["other"]["outcome"]) for m in calls) == [
        ("acme", "/upload", "ok"),
        ("globex", "/upload", "ok"),
    ]
    assert sorted((m["account"], m["measure"]["bytes"]) for m in by_meter(captured, "downloads")) == [
        ("acme", 10),
        ("globex", 20),
    ]
