"""Delivering a batch to every exporter: transient failures are retried with exponential
backoff and jitter, never sooner than the server's ``Retry-After``; what an exporter
refuses for good comes back as :class:`~meterkit_agent.component.Rejected`."""

from __future__ import annotations

import logging
from typing import Any

import tenacity

from ..component import Exporter, Rejected, RetryLater
from ..exporters.exporterhelper import RetryConfig
from .drain import Drain
from .telemetry import AgentMetrics

logger = logging.getLogger("meterkit.agent")

#: After this long retrying one batch, give the sender back control; it tries again.
OUTAGE_SECONDS = 120


class _Wait:
    """Exponential backoff with jitter, but never sooner than the server's Retry-After."""

    def __init__(self, retry: RetryConfig) -> None:
        self._backoff = tenacity.wait_exponential_jitter(
            initial=retry.initial_interval_millis / 1000.0, max=retry.max_interval_millis / 1000.0
        )

    def __call__(self, state: tenacity.RetryCallState) -> float:
        wait = float(self._backoff(state))
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryLater) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        return wait


class Deliverer:
    def __init__(
        self, exporters: list[Exporter], retry: dict[str, RetryConfig], drain: Drain, metrics: AgentMetrics
    ) -> None:
        self.exporters = exporters
        self.retry = retry
        self.drain = drain
        self.metrics = metrics

    def __call__(self, records: list[dict[str, Any]]) -> tuple[list[Rejected], list[dict[str, Any]]]:
        """(what the exporters refused, each exporter's answer for the journal). Raises
        :class:`RetryLater` when stopping or after a long outage: nothing is committed."""
        rejected: list[Rejected] = []
        answers: list[dict[str, Any]] = []
        for exporter in self.exporters:
            refused = self._with_retries(exporter, records)
            rejected.extend(refused)
            answers.append(
                {
                    "exporter": exporter.name,
                    "status": "acknowledged",
                    "refused": len(refused),
                    "answer": getattr(exporter, "last_answer", ""),
                }
            )
        return rejected, answers

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
            self.metrics.retried.add(1)
            exc = state.outcome.exception() if state.outcome else None
            logger.warning("meterkit agent: %s: %s; retrying in %.1f s", exporter.name, exc, state.upcoming_sleep)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryLater),
            wait=_Wait(retry),
            stop=stop,
            sleep=self.drain.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(exporter.export, records)
