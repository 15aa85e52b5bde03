"""The fence a destination consults before every send and around every commit: the
agent's lease (:mod:`..lease`), and the destination's own closing."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from ..lease import Fenced, Lease


class Fence:
    """What a destination consults before every send and around every commit: the agent's
    lease once it holds one (an agent takes it in :meth:`...agent.Agent.start`, before any
    thread that sends or commits runs), and whether the destination itself was closed
    (stopped to be rebuilt: a sender thread still in a request then commits nothing)."""

    def __init__(self) -> None:
        self.lease: Lease | None = None
        self.closed = False
        self._lock = threading.Lock()

    @property
    def epoch(self) -> int | None:
        return self.lease.epoch if self.lease is not None else None

    @property
    def lost(self) -> bool:
        """For good: closed, or the lease went to another agent."""
        return self.closed or (self.lease is not None and self.lease.lost is not None)

    def check(self) -> None:
        if self.closed:
            raise Fenced("the destination was stopped")
        if self.lease is not None:
            self.lease.check()

    def holds(self) -> bool:
        """Whether this process may still write its state (the status file, say): what
        :meth:`check` says, now (a leader woken from SIGSTOP may not have heard yet that it
        lost the lease)."""
        try:
            self.check()
        except Fenced:
            return False
        return True

    def epoch_to_send(self) -> int | None:
        """Check, then the epoch a request goes out under (an exporter's ``fence``)."""
        self.check()
        return self.epoch

    @contextlib.contextmanager
    def committing(self) -> Iterator[None]:
        """Commit under the lease's commit lock; raises :class:`Fenced` before the body runs
        when closed or no longer leading."""
        with self._lock:
            if self.closed:
                raise Fenced("the destination was stopped")
            with self._leased():
                yield

    @contextlib.contextmanager
    def writing_off(self) -> Iterator[None]:
        """Commit for a closed destination (its expired segments, :mod:`.expiry`):
        under the lease's commit lock like any commit, closed or not."""
        with self._lock, self._leased():
            yield

    def _leased(self) -> contextlib.AbstractContextManager[None]:
        """The lease's commit lock, checked, once this fence holds a lease."""
        return self.lease.committing() if self.lease is not None else contextlib.nullcontext()

    def close(self) -> None:
        """From now on nothing is sent or committed; waits for a commit in progress."""
        with self._lock:
            self.closed = True
