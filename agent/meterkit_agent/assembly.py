"""Building an agent's parts from its configuration: each destination with its own
processors and state, and the feed a pipeline's destinations share."""

from __future__ import annotations

from typing import Any

from meterkit._spool import private_dir

from .component import Processor, factory
from .config import AgentConfig
from .exporters import EXPORTERS
from .exporters.exporterhelper import RetryConfig
from .lease import Lease
from .paths import claim_state
from .pipeline.destination import Destination
from .pipeline.feed import Feed
from .pipeline.retire import Retirer
from .pipeline.telemetry import AgentMetrics
from .processors import PROCESSORS
from .processors.batch import BatchConfig


def shared_feed(config: AgentConfig, pipeline: str, metrics: AgentMetrics, members: list[Destination]) -> Feed:
    """The feed that reads ``pipeline``'s spools once for its destinations, with processors
    of its own (it runs them on its own thread)."""
    processors, batch_cfg = _processors(config, pipeline)
    holder: list[Feed] = []
    view = metrics.for_feed(pipeline, lambda: len(holder[0].worker.queue) if holder else 0)
    holder.append(Feed(pipeline, processors, batch_cfg, view, members))
    return holder[0]


def _processors(config: AgentConfig, pipeline: str) -> tuple[list[tuple[str, Processor]], BatchConfig]:
    pipe = config.service.pipelines[pipeline]
    batch_cfg = BatchConfig()
    processors: list[tuple[str, Processor]] = []
    for pid in pipe.processors:
        cfg = config.component("processors", pid)
        if isinstance(cfg, BatchConfig):
            batch_cfg = cfg
        elif (proc := build(PROCESSORS, pid, cfg)) is not None:
            processors.append((pid, proc))
    return processors, batch_cfg


def build_destination(
    config: AgentConfig, pipeline: str, cid: str, metrics: AgentMetrics, retire: Retirer, lease: Lease | None
) -> Destination:
    """The destination of exporter ``cid`` in ``pipeline``, with processors of its own (a
    destination's worker runs them on its own thread), its state claimed for it."""
    processors, batch_cfg = _processors(config, pipeline)
    cfg = config.component("exporters", cid)
    state = private_dir(config.state_dir_of(cid))
    claim_state(state, cid, alone=len(config.destinations) == 1)
    exporter = build(EXPORTERS, cid, cfg)
    return Destination(
        exporter, getattr(cfg, "retry", RetryConfig()), processors, batch_cfg, state, metrics, retire, lease
    )


def build(registry: dict[str, str], cid: str, cfg: Any, *context: Any) -> Any:
    found = factory(registry, cid)
    assert found is not None, cid  # the configuration was validated against the same registry
    return found.create(cid, cfg, *context)
