"""Celery: one measurement per task run, in one line.

::

    from meterkit.integrations.celery import instrument_celery

    instrument_celery(app, meter="jobs", account=lambda task, args, kwargs: kwargs["account"],
                      measure={"runs": 1}, outcome="outcome")

Hooks Celery's ``task_prerun``/``task_postrun`` signals, which run in the worker thread
around the task itself (eager tasks included), filtered to ``app``'s tasks. The task runs
inside ``meterkit.context(account=...)``. ``account`` is a callable given
``(task, args, kwargs)``, or a string naming a keyword argument of the task. Outcomes:
``ok``, ``error``, ``retry`` (the task asked to be retried), ``limited`` (it raised
:class:`meterkit.LimitExceeded`; retry it with ``countdown=math.ceil(exc.retry_after)``).
``limit=True`` is not offered here: a signal cannot stop a task; use
``@meterkit.meter(..., limit=True)`` inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._errors import LimitExceeded
from ._common import LIMITED, RETRY, Call, Metered, extract_account, require

_signals = require("celery.signals", "Celery", "celery")


def instrument_celery(
    app: Any, meter: str, *, account: str | Callable[..., str | None] | None = None, **options: Any
) -> None:
    """Meter every task of ``app`` run in this process (options: :class:`Metered`)."""
    if options.get("limit"):
        raise ValueError("instrument_celery() cannot refuse a task; use @meterkit.meter(..., limit=True) inside it")
    extractor: Callable[..., str | None] | None
    if isinstance(account, str):
        name = account
        extractor = lambda task, args, kwargs: kwargs.get(name)  # noqa: E731  (a keyword argument of the task)
    else:
        extractor = account
    metered = Metered(meter, **options)
    # Per task id, a stack: an eager retry runs inside the run that asked for it, same id.
    running: dict[str, list[Call]] = {}

    def prerun(
        sender: Any = None, task_id: str = "", task: Any = None, args: Any = (), kwargs: Any = None, **_: Any
    ) -> None:
        if task is None or task.app is not app:
            return
        found = extract_account(extractor, None, task, tuple(args or ()), dict(kwargs or {}))
        running.setdefault(task_id, []).append(metered.start(found))

    def failure(
        sender: Any = None, task_id: str = "", exception: BaseException | None = None, einfo: Any = None, **_: Any
    ) -> None:
        stack = running.get(task_id)
        call = stack[-1] if stack else None
        if call is None or exception is None:
            return
        # Celery may hand the signal a rebuilt copy of an exception it cannot pickle as is
        # (``LimitExceeded`` carries its decision); ``einfo.type`` is the one raised.
        raised = getattr(einfo, "type", None)
        call.failure = LIMITED if isinstance(raised, type) and issubclass(raised, LimitExceeded) else None
        if call.failure is None:
            call.failed(exception)

    def postrun(sender: Any = None, task_id: str = "", state: str | None = None, **_: Any) -> None:
        stack = running.get(task_id)
        if not stack:
            return
        call = stack.pop()
        if not stack:
            del running[task_id]
        if state == "RETRY":
            call.failure = RETRY
        call.__exit__(None, None, None)

    _signals.task_prerun.connect(prerun, weak=False)
    _signals.task_failure.connect(failure, weak=False)
    _signals.task_postrun.connect(postrun, weak=False)


__all__ = ["instrument_celery"]
