"""The shutdown deadline every part of the pipeline respects.

While running, the pipeline waits as long as it must (the spool holds everything). Once
stopping, it still delivers what it read, but never past the drain deadline: what is not
acknowledged by then stays uncommitted and is replayed from the spool at the next start.
"""

from __future__ import annotations

import threading
import time


class Drain:
    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.deadline = float("inf")

    def begin(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.stopping.set()

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def out_of_time(self) -> bool:
        return self.stopping.is_set() and time.monotonic() >= self.deadline

    def sleep(self, seconds: float) -> None:
        """Back off, but never past the drain deadline once stopping."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self.stopping.is_set():
                end = min(end, self.deadline)
                time.sleep(max(0.0, min(left, 0.05)))
            else:
                self.stopping.wait(left)
