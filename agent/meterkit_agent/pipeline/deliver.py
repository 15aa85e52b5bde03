"""Delivering a batch to every exporter.

Transient failures (:class:`RetryLater`) are retried with exponential backoff and jitter,
never sooner than the server's ``Retry-After``. A destination that answers 401, 403 or
404 (:class:`Misconfigured`) is paused, not failed: delivery keeps trying with backoff,
one ERROR per episode names the destination and the status, ``meterkit agent status`` and
the ``meterkit.agent.paused`` metric show it, and everything arrives once the
configuration is fixed. What an exporter refuses for good comes back as
:class:`Rejected`; an exporter that fails on a record in a way it did not foresee is
narrowed down by halving until the record is found and set aside alone.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import tenacity

from ..component import Exporter, Misconfigured, Rejected, RetryLater
from ..exporters.exporterhelper import RetryConfig
from ..lease import Fenced
from .drain import Drain
from .fence import Fence
from .telemetry import AgentMetrics

logger = logging.getLogger("meterkit.agent")

#: After this long retrying one batch, give the sender back control; it tries again.
OUTAGE_SECONDS = 120


class _Wait:
    """Exponential backoff with jitter, but never sooner than the server's Retry-After."""

    def __init__(self, retry: RetryConfig) -> None:
        initial = retry.initial_interval_millis / 1000.0
        # Jitter of up to one initial interval (tenacity's default is a whole second,
        # which would swamp a 50 ms first retry).
        self._backoff = tenacity.wait_exponential_jitter(
            multiplier=initial, max=retry.max_interval_millis / 1000.0, jitter=initial
        )

    def __call__(self, state: tenacity.RetryCallState) -> float:
        wait = float(self._backoff(state))
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryLater) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        return wait


class Deliverer:
    def __init__(
        self,
        exporters: list[Exporter],
        retry: dict[str, RetryConfig],
        drain: Drain,
        metrics: AgentMetrics,
        fence: Fence | None = None,
    ) -> None:
        self.exporters = exporters
        self.fence = fence or Fence()
        self.retry = retry
        self.drain = drain
        self.metrics = metrics
        self.paused: dict[str, Misconfigured] = {}  # exporter -> why, while its episode lasts
        #: retrying a batch the destination refused for now (down, 5xx, timeouts, paused)
        self.failing = False
        metrics.observe_paused(lambda: {name: exc.status for name, exc in self.paused.items()})

    def __call__(self, records: list[dict[str, Any]]) -> tuple[list[Rejected], list[dict[str, Any]]]:
        """(what the exporters refused, each exporter's answer for the journal). Raises
        :class:`RetryLater` when stopping or after a long outage: nothing is committed."""
        rejected: list[Rejected] = []
        answers: list[dict[str, Any]] = []
        for exporter in self.exporters:
            refused = self._isolating(exporter, records)
            rejected.extend(dataclasses.replace(r, stage=r.stage or f"export:{exporter.name}") for r in refused)
            answers.append(
                {
                    "exporter": exporter.name,
                    "status": "acknowledged",
                    "refused": len(refused),
                    "answer": getattr(exporter, "last_answer", ""),
                }
            )
        return rejected, answers

    def _isolating(self, exporter: Exporter, records: list[dict[str, Any]]) -> list[Rejected]:
        """Export; if the exporter fails unexpectedly, halve until the failing records are
        found. Re-sending the halves that were delivered is harmless: uids are idempotent."""
        try:
            return self._with_retries(exporter, records)
        except (RetryLater, Fenced):
            raise
        except Exception as exc:
            if len(records) == 1:
                logger.warning("meterkit agent: %s failed on one measurement: %r", exporter.name, exc)
                return [Rejected(records[0], f"export_failed:{type(exc).__name__}", str(exc)[:2000])]
            middle = len(records) // 2
            return self._isolating(exporter, records[:middle]) + self._isolating(exporter, records[middle:])

    def _with_retries(self, exporter: Exporter, records: list[dict[str, Any]]) -> list[Rejected]:
        retry = self.retry.get(exporter.name, RetryConfig())

        def stop(state: tenacity.RetryCallState) -> bool:
            # Keep trying while running (the spool holds everything); give up only to let a
            # shutdown finish within its deadline, or to let the worker back off after a
            # long outage and pick up where it was.
            if self.drain.out_of_time():
                return True
            return (state.seconds_since_start or 0.0) > OUTAGE_SECONDS

        def before_sleep(state: tenacity.RetryCallState) -> None:
            self.failing = True
            self.metrics.retried.add(1)
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, Misconfigured):
                self._pause(exporter.name, exc)
                return
            logger.warning("meterkit agent: %s: %s; retrying in %.1f s", exporter.name, exc, state.upcoming_sleep)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryLater),
            wait=_Wait(retry),
            stop=stop,
            sleep=self.drain.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

        def export(batch: list[dict[str, Any]]) -> list[Rejected]:
            self.fence.check()  # a leader that lost its lease, or was paused, sends nothing
            return exporter.export(batch)

        try:
            refused: list[Rejected] = retrying(export, records)
        except Misconfigured as exc:
            self._pause(exporter.name, exc)
            raise
        self.failing = False
        self._resume(exporter.name)
        return refused

    def _pause(self, name: str, exc: Misconfigured) -> None:
        if name not in self.paused:
            logger.error(
                "meterkit agent: delivery to %s is PAUSED: %s. Nothing is discarded; measurements wait"
                " in the spool and are delivered once the URL or credentials are fixed.",
                name,
                exc,
            )
        self.paused[name] = exc

    def _resume(self, name: str) -> None:
        if self.paused.pop(name, None) is not None:
            logger.warning("meterkit agent: delivery to %s resumed", name)
