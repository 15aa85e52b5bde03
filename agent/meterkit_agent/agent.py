"""The agent: a small facade that builds the pipeline from a configuration, and starts,
flushes and stops it.

Each exporter is a destination (:mod:`.pipeline.destination`) with its own cursor over
the spool(s): its tailers hand frames to its delivery worker (the SDK's
:class:`BatchWorker`, the same batching engine as the SDK's flusher), which prepares each
batch (:mod:`.pipeline.prepare`) and hands it to its sender (:mod:`.pipeline.sender`):
delivered with retries, refused records dead-lettered, its journal appended and only then
its checkpoint advanced. A crash anywhere replays from the checkpoint; uids make the
replay harmless. A destination that is down delays only itself. A segment is retired
once every destination reading it has acknowledged it (:mod:`.pipeline.retire`).

The first destination (the first exporter of the first pipeline) keeps its state in the
state directory itself, as an agent with one exporter always has; every other one in
``<state_dir>/destinations/<exporter id>``, so adding a destination later moves nothing.
With ``service.extensions: [balances]`` a keeper thread (:mod:`.balances`) beside the
pipeline rewrites the SDK's balance snapshot from the ledger.

A running agent holds the state directory's lease (:mod:`.lease`) from start to stop: two
agents on one state directory would each advance the one checkpoint and journal, so a
second one refuses to start, or, run as a standby, waits and takes over when the leader
dies, pauses or stops. Every send checks the lease and every commit is made under it
(and carries its epoch), so a leader that lost it sends and commits nothing more.
"""

from __future__ import annotations

import functools
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meterkit._spool import private_dir

from .assembly import build, build_destination, shared_feed
from .balances import SNAPSHOT_NAME, BalancesKeeper, SpoolWatermark
from .component import Exporter, Receiver, catalog_at, type_of
from .config import AgentConfig
from .lease import AgentRunning as AgentRunning
from .lease import Lease
from .lease import running_pid as running_pid
from .paths import stranded_segments
from .pipeline.checkpoint import Checkpoint
from .pipeline.deadletters import REPLAY_SPOOL, DeadLetters
from .pipeline.destination import Destination
from .pipeline.expiry import Expiry
from .pipeline.feed import Feed
from .pipeline.fence import Fence
from .pipeline.prepare import Preparer
from .pipeline.retire import Retirer
from .pipeline.telemetry import AgentMetrics
from .processors.validate import ValidateConfig
from .receivers import RECEIVERS
from .receivers.spool import SpoolReceiver

logger = logging.getLogger("meterkit.agent")
#: The one start-up line (what the agent reads, where it sends): ``agent run`` shows it
#: without ``--verbose``.
startup_logger = logging.getLogger("meterkit.agent.startup")


def describe(config: AgentConfig) -> str:
    """What an agent with ``config`` reads and where it sends, without any secret: spool
    directories and listening endpoints; exporters by kind and host (a URL's host, a
    database's dialect and host or file, a file's path), each with the state directory
    that holds its progress."""
    reads: list[str] = []
    for pipe in config.service.pipelines.values():
        for cid in pipe.receivers:
            cfg = config.component("receivers", cid)
            where = getattr(cfg, "directory", None) or getattr(cfg, "endpoint", None)
            read = f"{cid} {where}" if where is not None else cid
            if read not in reads:
                reads.append(read)
    state = Path(config.service.state_dir)
    reads.append(f"replay {state / REPLAY_SPOOL}")
    sends = []
    for i, (_, cid) in enumerate(config.destinations):
        where = _destination(config.component("exporters", cid))
        sends.append(f"{cid} {where}" + ("" if i == 0 else f" (state {config.state_dir_of(cid)})"))
    return f"meterkit agent started: reads {', '.join(reads)}; sends to {', '.join(sends)}; state {state}"


def _destination(cfg: Any) -> str:
    for name in ("base_url", "url"):
        if hasattr(cfg, name):
            url = getattr(cfg, name)
            if not url:
                return "m3ter.com"  # the m3ter exporter's default hosts
            parts = urlsplit(str(url))
            return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
    if hasattr(cfg, "db"):
        parts = urlsplit(str(cfg.db))
        return f"{parts.scheme}://{parts.hostname or ''}{parts.path if not parts.hostname else ''}"
    return str(getattr(cfg, "path", ""))


#: Container allocations between the cyclic collector's young collections (Python's default
#: is 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Tune the cyclic garbage collector for a process that is the agent. The agent makes
    a dict per measurement and frees it by reference counting (records hold no cycles);
    by default a young collection runs every 700 allocations, walking the records still in
    flight, about 0.2 to 0.5 µs of CPU a measurement. Rarer young collections, and the
    objects made at start-up frozen out of the collector's way, keep that small; cycles
    are still collected."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT. Install it first thing, so a signal that arrives
    while the agent is still starting up drains it instead of killing it."""
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("meterkit agent: %s received, draining", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return done


class Agent:
    """Every destination of every pipeline, the network receivers that feed their spools,
    the retirer they share and the balance keeper, started and stopped together."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state_dir = private_dir(config.service.state_dir)
        self.fence = Fence()  # holds the lease from start() on
        self.metrics = AgentMetrics(
            self.state_dir, lambda: 0, telemetry=config.service.telemetry, writable=self.fence.holds
        )
        self.catalog = catalog_at(
            next((c.catalog for c in config.processors.values() if isinstance(c, ValidateConfig) and c.catalog), None)
        )
        self.destinations: list[Destination] = []
        #: per pipeline with several destinations, the feed that reads its spools once for them
        self.shared: list[Feed] = []
        self.retirer = Retirer(self.feeds, self.state_dir, config.service.retain_segments_hours, self.fence)
        self.http_servers: list[Receiver] = []
        self._building: Feed | None = None  # what reads the spools of the pipeline being built
        self._tails: list[tuple[Path, float]] = []
        tailed: dict[str, list[tuple[Path, float]]] = {}  # receiver id -> the spools it feeds
        for name, pipe in config.service.pipelines.items():
            members = [self._destination(name, cid) for cid in pipe.exporters]
            self.destinations.extend(members)
            if len(members) > 1:
                self.shared.append(shared_feed(config, name, self.metrics, members))
            self._building = self.shared[-1] if len(members) > 1 else members[0].feed
            for cid in pipe.receivers:
                if cid in tailed:  # built for an earlier pipeline: tail its spools here too
                    for directory, poll in tailed[cid]:
                        self._building.tail(directory, poll)
                    continue
                self._tails = []
                server = build(RECEIVERS, cid, config.component("receivers", cid), self)
                tailed[cid] = self._tails
                if server is not None:
                    self.http_servers.append(server)
            for destination in members:
                destination.tail(destination.replay_dir, 0.5)
        self._building = None
        self.balances = _balance_keeper(self)
        retention = config.service.spool_retention_hours
        self.expiry = Expiry(self, retention, max(0.2, min(60.0, retention * 360)))
        self.lost = threading.Event()  #: set when another agent took the lease (this one stops sending)

    def _destination(self, pipeline: str, cid: str) -> Destination:
        return build_destination(self.config, pipeline, cid, self.metrics, self.retirer, self.fence.lease)

    # -- what a receiver sees of the agent (component.ReceiverHost) ----------------------

    def tail(self, directory: Path, poll_interval: float) -> None:
        """Read a spool directory for every destination of the pipeline being built."""
        self._tails.append((Path(directory), poll_interval))
        if self._building is not None:
            self._building.tail(directory, poll_interval)

    def feeds(self) -> list[Feed]:
        """Everything that reads a spool: the shared feeds, then each destination's own."""
        return [*self.shared, *(d.feed for d in self.destinations)]

    def readers(self, directory: Path) -> list[Destination]:
        """The destinations that read ``directory``: by their own feed, or a shared one."""
        return [
            d
            for d in self.destinations
            if any(r.directory == directory for f in self.feeds() if d in f.members for r in f.receivers)
        ]

    # -- the first destination, for callers that know of one (single-exporter agents) ---

    @property
    def primary(self) -> Destination:
        return self.destinations[0]

    @property
    def checkpoint(self) -> Checkpoint:
        return self.primary.checkpoint

    @property
    def dead_letters(self) -> DeadLetters:
        return self.primary.dead_letters

    @property
    def receivers(self) -> list[SpoolReceiver]:
        return self.primary.receivers

    @property
    def prepare(self) -> Preparer:
        return self.primary.feed.prepare

    @property
    def exporters(self) -> list[Exporter]:
        return [d.exporter for d in self.destinations]

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, lease: Lease | None = None) -> None:
        """Start every thread, holding the state directory's lease (``lease``, if the
        caller took it already, as a standby does before it builds the agent); raises
        :class:`AgentRunning` if another agent holds it."""
        held = lease or Lease.acquire(self.state_dir, standby=False)
        assert held is not None  # only a standby's wait returns None
        held.on_lost = self._on_lost
        if held.lost is not None:  # lost while this agent was being built (paused, say)
            self._on_lost(held.lost)
        self.fence.lease = held
        for destination in self.destinations:
            destination.fence.lease = held
            destination.start()
        for feed in self.shared:
            feed.start()
        for server in self.http_servers:
            server.start()
        if self.balances is not None:
            self.balances.start()
        self.expiry.start()
        startup_logger.info("%s", describe(self.config))
        warn_stranded([r.directory for f in self.feeds() for r in f.receivers])

    def stop(self, timeout: float | None = None) -> bool:
        """Stop reading, deliver what was read within ``timeout``, checkpoint, close.
        Every destination drains against the same deadline, side by side."""
        if timeout is None:
            timeout = self.config.service.drain_timeout_millis / 1000.0
        for destination in self.destinations:
            destination.begin_stop(timeout)
        self.expiry.shutdown()
        if self.balances is not None:
            self.balances.shutdown()
        # Network receivers first (their last writes land in a spool), then the tailers.
        for server in self.http_servers:
            server.shutdown(max(1.0, timeout))
        for feed in self.shared:
            feed.stop_reading(timeout)
        for destination in self.destinations:
            destination.stop_reading()
        # The shared feeds hand on what they read before the destinations finish theirs.
        results = side_by_side({f"feed {f.name}": functools.partial(f.finish, timeout) for f in self.shared})
        results |= side_by_side({d.name: functools.partial(d.finish, timeout) for d in self.destinations})
        drained = all(results.values())
        self.metrics.shutdown()
        if self.fence.lease is not None:
            self.fence.lease.release()  # a standby takes over at once
        if not drained:
            late = ", ".join(sorted(name for name, ok in results.items() if not ok))
            logger.warning(
                "meterkit agent: stopped before everything read was acknowledged by %s; it will be replayed on restart",
                late,
            )
        return drained

    def run_forever(self, done: threading.Event | None = None, lease: Lease | None = None) -> int:
        """Run until SIGTERM/SIGINT (or ``done`` is set), or until another agent takes the
        lease, then drain. 0 if fully drained."""
        if done is None:
            done = stop_on_signals()
        tune_gc()
        self.start(lease)
        while not done.wait(0.2):
            if self.lost.is_set():
                break
        return 0 if self.stop() else 1

    def _restart(self, old: Destination, between: Callable[[Destination], None]) -> None:
        """Stop a destination (closed: a request still in flight commits nothing), run
        ``between`` on its state, and put a new one built from that state in its place
        (reading on its own: a destination that was behind does not rejoin a shared feed)."""
        for feed in self.shared:
            feed.detach(old, "its retention ran out")
        old.fence.close()
        old.begin_stop(0.0)
        old.stop_reading()
        old.finish(0.0)
        between(old)
        pipeline = next(p for p, cid in self.config.destinations if cid == old.name)
        new = self._destination(pipeline, old.name)
        new.fence.lease = self.fence.lease
        for tailer in old.receivers:
            new.tail(tailer.directory, tailer.poll_interval)
        self.destinations[self.destinations.index(old)] = new
        new.start()
        self.retirer()

    def _on_lost(self, reason: str) -> None:
        """The lease went to another agent: stop at once, sending and committing nothing."""
        logger.error("meterkit agent: %s; this agent stops sending", reason)
        for destination in self.destinations:
            destination.begin_stop(0.0)
        self.lost.set()

    def flush(self, timeout: float = 30.0) -> bool:
        """Deliver everything read so far to every destination (receivers keep running)."""
        deadline = time.monotonic() + timeout
        shared = all([f.worker.flush(max(0.0, deadline - time.monotonic())) for f in self.shared])
        return all([d.flush(deadline) for d in self.destinations]) and shared


def warn_stranded(read: list[Path]) -> None:
    """Name the segments an older SDK left in the user-wide default spool that no receiver
    in ``read`` tails: nothing would ever deliver them."""
    if stranded := stranded_segments(read):
        logger.warning(
            "meterkit agent: %d segment(s) wait in %s, the default spool of SDKs before per-project state,"
            " and no receiver reads it: add it as a spool receiver to deliver them",
            stranded[1],
            stranded[0],
        )


def side_by_side(work: dict[str, Callable[[], bool]]) -> dict[str, bool]:
    """Run each piece of work on a thread of its own; what each returned."""
    results: dict[str, bool] = {}
    threads = [
        threading.Thread(target=lambda n=n, w=w: results.__setitem__(n, w()), daemon=True) for n, w in work.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {name: results.get(name, False) for name in work}


def _balance_keeper(agent: Agent) -> BalancesKeeper | None:
    """The balance keeper, if configured: it writes ``path``, or ``balances.json`` in each
    directory a spool receiver reads (where the SDKs writing there look for it), and takes
    ``as_of`` from every spool the agent tails, as acknowledged by its slowest destination."""
    cfg = agent.config.balances
    if cfg is None:
        return None
    spools = [
        agent.config.component("receivers", r).directory
        for pipe in agent.config.service.pipelines.values()
        for r in pipe.receivers
        if type_of(r) == "spool"
    ]
    paths = [cfg.path] if cfg.path is not None else [Path(d) / SNAPSHOT_NAME for d in dict.fromkeys(spools)]
    refreshes = agent.metrics.provider.get_meter("meterkit.agent", "0.1.0").create_counter(
        "meterkit.agent.balance_refreshes", unit="{refresh}"
    )

    def directories() -> list[Path]:
        return list(dict.fromkeys(r.directory for f in agent.feeds() for r in f.receivers))

    def acknowledged(key: str) -> int:
        """How far every destination reading ``key``'s spool has acknowledged it."""
        readers = agent.readers(Path(key.rsplit("/", 1)[0]))
        return min((d.checkpoint.get(key) for d in readers), default=0)

    return BalancesKeeper(
        cfg,
        paths,
        SpoolWatermark(directories, acknowledged),
        agent.state_dir,
        on_refresh=lambda outcome: refreshes.add(1, {"outcome": outcome}),
    )
