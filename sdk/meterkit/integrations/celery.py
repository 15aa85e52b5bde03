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

The publisher's scope travels with the task. A task sent inside
``meterkit.context(account="acme")`` carries that scope (its account and its Who, What,
Where, Other and Metadata values) in a message header, :data:`HEADER`, added by Celery's
``before_task_publish`` signal, as tracing context travels; the worker runs the task inside
it. So a web request's account bills the work it queues, with no ``account`` argument on
the task. An ``account`` the extractor finds wins over the carried one. The header is added
by every process that called :func:`instrument_celery` or :func:`propagate_context`, as a
Celery app module imported by both the web process and the worker does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._errors import LimitExceeded
from .._scope import SCOPED_CATEGORIES, context, current_scope
from ._common import LIMITED, RETRY, Call, Metered, extract_account, require

_signals = require("celery.signals", "Celery", "celery")

#: The message header that carries the publisher's scope to the worker.
HEADER = "meterkit_scope"


def _carry_scope(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish``: put the publishing thread's scope into the task's headers.
    Only strings travel (what a scope holds: an account and string fields); nothing is
    added outside a scope."""
    scope = current_scope.get()
    if headers is None:
        return
    carried: dict[str, Any] = {"account": scope.account} if isinstance(scope.account, str) else {}
    for category in SCOPED_CATEGORIES:
        values = getattr(scope, category)
        if values:
            carried[category] = {str(k): v for k, v in values.items() if isinstance(v, str)}
    if carried:
        headers[HEADER] = carried


def propagate_context() -> None:
    """Carry ``meterkit.context`` from this process to the tasks it sends (a publisher that
    does not call :func:`instrument_celery`). Idempotent."""
    _signals.before_task_publish.connect(_carry_scope, weak=False, dispatch_uid="meterkit.carry_scope")


def _carried(task: Any) -> context | None:
    """The scope the task's message carries, as a context to run it in; None without one.
    A malformed header (a publisher of another version, a hand-made message) is ignored."""
    found = getattr(getattr(task, "request", None), HEADER, None)
    if not isinstance(found, dict):
        return None
    account = found.get("account")
    values = {c: found[c] for c in SCOPED_CATEGORIES if isinstance(found.get(c), dict)}
    return context(account if isinstance(account, str) else None, **values)


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
    # Each run: its measurement and the carried scope it runs in (entered first, left last).
    running: dict[str, list[tuple[Call, context | None]]] = {}
    propagate_context()

    def prerun(
        sender: Any = None, task_id: str = "", task: Any = None, args: Any = (), kwargs: Any = None, **_: Any
    ) -> None:
        if task is None or task.app is not app:
            return
        carried = _carried(task)
        if carried is not None:
            carried.__enter__()
        found = extract_account(extractor, None, task, tuple(args or ()), dict(kwargs or {}))
        try:
            call = metered.start(found)  # None: the account of the scope carried, if any
        except BaseException:
            if carried is not None:
                carried.__exit__(None, None, None)
            raise
        running.setdefault(task_id, []).append((call, carried))

    def failure(
        sender: Any = None, task_id: str = "", exception: BaseException | None = None, einfo: Any = None, **_: Any
    ) -> None:
        stack = running.get(task_id)
        call = stack[-1][0] if stack else None
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
        call, carried = stack.pop()
        if not stack:
            del running[task_id]
        if state == "RETRY":
            call.failure = RETRY
        try:
            call.__exit__(None, None, None)
        finally:
            if carried is not None:
                carried.__exit__(None, None, None)

    _signals.task_prerun.connect(prerun, weak=False)
    _signals.task_failure.connect(failure, weak=False)
    _signals.task_postrun.connect(postrun, weak=False)


__all__ = ["HEADER", "instrument_celery", "propagate_context"]
