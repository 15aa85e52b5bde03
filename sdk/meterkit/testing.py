"""Helpers for testing code that records usage (public API).

::

    from meterkit.testing import capture_measurements

    def test_download_is_metered():
        with capture_measurements() as captured:
            download(account="acme", size=1024)
        assert captured.measurements[0]["measure"] == {"bytes": 1024}
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import _api
from ._catalog import Catalog
from ._client import Client
from ._sinks import MemorySink


class Captured:
    """What was recorded inside :func:`capture_measurements`."""

    def __init__(self, client: Client, sink: MemorySink) -> None:
        self.client = client
        self._sink = sink

    @property
    def measurements(self) -> list[dict[str, Any]]:
        """Validated measurements in wire shape, in the order they were recorded."""
        self.client.flush(10.0)
        return list(self._sink.records)

    @property
    def rejected(self) -> list[dict[str, Any]]:
        """Measurements refused in production mode, with ``reason``, ``meter`` and ``field``."""
        self.client.flush(10.0)
        return list(self._sink.rejected)

    @property
    def controls(self) -> list[dict[str, Any]]:
        """Control records (tallies and losses) that would have gone to the spool."""
        self.client.flush(10.0)
        return list(self._sink.controls)

    def __len__(self) -> int:
        return len(self.measurements)


@contextmanager
def capture_measurements(
    catalog: str | Path | Catalog | None = None, *, mode: str = "strict", **settings: Any
) -> Iterator[Captured]:
    """Route the module-level API to memory for the ``with`` block.

    Strict by default, so a bad measurement fails the test at the line that recorded it.
    The previous process-wide client is restored afterwards.
    """
    sink = MemorySink()
    client = Client(catalog, spool_dir="/nonexistent", mode=mode, sink=sink, **settings)
    with _api._lock:
        previous, _api._client = _api._client, client
    try:
        yield Captured(client, sink)
    finally:
        client.flush(10.0)
        with _api._lock:
            _api._client = previous
        client.shutdown()
