"""The balance keeper: the agent's extension that keeps the SDK's balance snapshot fresh.

Every ``interval_millis`` (30 s) it asks the ledger for every account's usage toward its
caps up to an instant ``as_of`` (``GET /organizations/{org}/balances?as_of=...``) and
rewrites the snapshot file the SDK's cap decisions read (docs/limits.md), atomically:
a temporary file in the same directory, fsync, rename. A failed refresh keeps the file in
place, which goes stale by its ``fetched_at``; the failure is logged once per streak.

**Choosing ``as_of``.** The contract: every measurement recorded on this host with a time
before ``as_of`` is in the snapshot, because the SDK forgets what it allowed before
``as_of``. So ``as_of`` is the latest instant before which everything written to the spools
this agent reads has been acknowledged by every exporter (:class:`SpoolWatermark`), minus
``flush_margin_millis`` for what the SDKs still hold in memory (their flusher writes every
200 ms by default). When the pipeline is drained that is now minus the margin; under load,
about one delivery latency earlier. It never goes back: what was delivered stays so.

``extensions: {balances: {...}}`` with ``service.extensions: [balances]``, as the
Collector configures what is not a pipeline component::

    extensions:
      balances: {ledger_url: "http://127.0.0.1:8765", org_id: acme, token: "${LEDGER_TOKEN}"}
    service:
      extensions: [balances]

An ``https://`` ledger's certificate is verified as the exporters verify theirs
(``transport.TlsConfig``): ``tls: {ca_file: ...}`` for a private CA, ``cert_file`` and
``key_file`` for mutual TLS.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
import requests
from pydantic import Field, SecretStr, field_validator

from meterkit._caps import parse_snapshot
from meterkit._guard import background_error
from meterkit._permissions import is_shared
from meterkit._spool import MAGIC, segments

from .component import Settings
from .exporters.transport import TlsConfig, session
from .instants import InstantError, iso, parse_instant

logger = logging.getLogger("meterkit.agent")

#: The snapshot's file name in a spool directory (the SDK's default ``balances_path``).
SNAPSHOT_NAME = "balances.json"
#: What the keeper last did, in the agent's state directory, for ``meterkit agent status``.
STATUS_NAME = "balances-status.json"
#: How often the spools are looked at for the watermark (at most; the interval if shorter).
SAMPLE_SECONDS = 1.0
#: Samples kept while the pipeline catches up; older ones are dropped (which only delays
#: ``as_of``, never makes it too late: each sample's claim stands on its own).
MAX_SAMPLES = 900
#: A segment's fixed header (docs/spool-format.md): magic, version, reserved, metadata length.
_FIXED = struct.Struct("<8sHHI")
_CRC_BYTES = 4


class BalancesConfig(Settings):
    #: a meterkit ledger's base URL (``meterkit ledger serve --plans``)
    ledger_url: str
    org_id: str
    token: SecretStr | None = None
    interval_millis: int = Field(30_000, gt=0)
    #: None: ``<directory>/balances.json`` in each directory a ``spool`` receiver reads
    path: Path | None = None
    #: how long an SDK may hold a measurement before its spool has it
    flush_margin_millis: int = Field(2_000, ge=0)
    request_timeout_millis: int = Field(10_000, gt=0)
    tls: TlsConfig = TlsConfig()

    @field_validator("ledger_url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("ledger_url must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("ledger_url must not hold credentials; give token instead")
        return v.strip().rstrip("/")


class RefreshFailed(Exception):
    """A refresh that wrote nothing; the message says why and never holds the token."""

    def __init__(self, reason: str, outcome: str) -> None:
        super().__init__(reason)
        self.outcome = outcome  # the telemetry attribute: unreachable, http_error, bad_answer, write_failed


class SpoolWatermark:
    """The latest instant before which every byte written to the spools has been acknowledged.

    Each :meth:`sample` notes, at an instant ``t`` taken before listing, the segments that
    hold bytes past their acknowledged offset, and their sizes. Once each of them is
    acknowledged up to that size (or retired), everything written before ``t`` is delivered.
    A segment holding unacknowledged bytes also says that everything written before it was
    created (its name starts with that millisecond) lies in other segments, so a backlog
    found at start-up still gives a bound. A fresh segment's header is not a measurement:
    with nothing acknowledged, its frames start after the header.
    """

    def __init__(self, directories: Callable[[], list[Path]], acknowledged: Callable[[str], int]) -> None:
        self.directories = directories
        self.acknowledged = acknowledged
        self.mark_ms: int | None = None
        self._samples: deque[tuple[int, dict[str, tuple[Path, int]]]] = deque(maxlen=MAX_SAMPLES)
        self._header_ends: dict[str, int] = {}

    def sample(self) -> int | None:
        """Look at the spools now; the watermark in ms, or None while nothing bounds it."""
        now_ms = time.time_ns() // 1_000_000
        pending: dict[str, tuple[Path, int]] = {}
        for directory in self.directories():
            for path in segments(directory):
                key = f"{directory}/{path.name}"
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue  # retired between the listing and now
                if size > self._delivered(key, path):
                    pending[key] = (path, size)
        self._header_ends = {k: v for k, v in self._header_ends.items() if k in pending}
        self._samples.append((now_ms, pending))
        # Caught-up samples form a prefix: sizes and acknowledged offsets only grow, and a
        # retired segment never comes back. The last of them is the watermark.
        while self._samples and self._caught_up(self._samples[0][1]):
            self._advance(self._samples.popleft()[0])
        if pending:
            self._advance(min(_created_ms(path) for path, _ in pending.values()))
        return self.mark_ms

    def _advance(self, ms: int) -> None:
        if self.mark_ms is None or ms > self.mark_ms:
            self.mark_ms = ms

    def _caught_up(self, waiting: dict[str, tuple[Path, int]]) -> bool:
        return all(self._delivered(key, path) >= size or not path.exists() for key, (path, size) in waiting.items())

    def _delivered(self, key: str, path: Path) -> int:
        """The segment's bytes that hold nothing left to deliver."""
        acked = self.acknowledged(key)
        if acked:
            return acked
        end = self._header_ends.get(key)
        if end is None:
            end, known = _header_end(path)
            if known:  # a header still being written is read again next time
                self._header_ends[key] = end
        return end


def _header_end(path: Path) -> tuple[int, bool]:
    """Where a segment's frames start, after its header, and whether that is settled. 0 when
    the header is damaged (frames may follow it); the bytes there are while the file holds
    less than a fixed header (a writer writes its header in one piece, frames after it)."""
    try:
        with path.open("rb") as f:
            fixed = f.read(_FIXED.size)
    except OSError:
        return 0, False
    if len(fixed) < _FIXED.size:
        return (len(fixed), False) if MAGIC.startswith(fixed[: len(MAGIC)]) else (0, True)
    magic, _version, _reserved, length = _FIXED.unpack(fixed)
    return (_FIXED.size + length + _CRC_BYTES, True) if magic == MAGIC else (0, True)


def _created_ms(path: Path) -> int:
    """The millisecond a segment was created, from its name (``<ms>-<pid>-...``); 0 if unknown."""
    head = path.name.split("-", 1)[0]
    return int(head) if head.isascii() and head.isdigit() else 0


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a temporary file beside it, fsync, rename, fsync the
    directory. A reader sees the old file or the new one, never part of one. Owner only
    (0600), and the group may read in a directory shared on purpose (a spool shared with
    the application's group), whatever the umask."""
    directory = path.parent
    mode = 0o640 if is_shared(directory.stat().st_mode) else 0o600
    tmp = directory / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def snapshot_as_of_ms(path: Path) -> int | None:
    """The ``as_of`` of the snapshot in place, or None if there is none that reads."""
    try:
        return parse_snapshot(path.read_bytes()).as_of_ms
    except (OSError, ValueError):
        return None


class BalancesKeeper:
    """The thread that refreshes the snapshot files; started and stopped with the agent."""

    def __init__(
        self,
        cfg: BalancesConfig,
        paths: list[Path],
        watermark: SpoolWatermark,
        state_dir: Path,
        on_refresh: Callable[[str], None] = lambda _outcome: None,
    ) -> None:
        self.cfg, self.paths, self.watermark = cfg, paths, watermark
        self.status_path = state_dir / STATUS_NAME
        self.on_refresh = on_refresh
        self.url = f"{cfg.ledger_url}/organizations/{quote(cfg.org_id, safe='')}/balances"
        self.session = session(cfg.tls, Accept="application/json")
        if cfg.token is not None:
            self.session.headers["Authorization"] = f"Bearer {cfg.token.get_secret_value()}"
        # Never before a snapshot already written: what it included is still delivered (one
        # from the future, after the clock was set back, is no floor).
        now_ms = time.time_ns() // 1_000_000
        written = [ms for p in paths if (ms := snapshot_as_of_ms(p)) is not None and ms <= now_ms]
        self.as_of_ms: int | None = max(written, default=None)
        self.failures = 0
        self.last_error: str | None = None
        self.last_error_at: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meterkit-agent-balances", daemon=True)

    def start(self) -> None:
        self._save_status()
        self._thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():  # else a request is still out: the daemon thread ends with it
            self.session.close()

    def _run(self) -> None:
        interval = self.cfg.interval_millis / 1000.0
        tick = min(SAMPLE_SECONDS, interval)
        due = time.monotonic()
        while not self._stop.is_set():
            try:
                self.watermark.sample()
                if time.monotonic() >= due:
                    due = time.monotonic() + interval
                    self.refresh()
            except Exception as exc:
                background_error("balance snapshot", exc)
            self._stop.wait(tick)

    def next_as_of(self) -> int | None:
        """The ``as_of`` to ask for now (ms), or None while nothing bounds it."""
        mark = self.watermark.mark_ms
        if mark is None:
            return self.as_of_ms
        candidate = min(mark, time.time_ns() // 1_000_000) - self.cfg.flush_margin_millis
        return candidate if self.as_of_ms is None else max(candidate, self.as_of_ms)

    def refresh(self) -> bool:
        """One refresh: ask the ledger, write every snapshot file. False if it failed."""
        try:
            as_of = self.next_as_of()
            if as_of is None:
                raise RefreshFailed("the spools hold undelivered measurements of unknown age", "waiting")
            fetched_at = iso(time.time_ns() // 1_000_000)
            answer = self._fetch(as_of)
            data, answered = _snapshot(answer, as_of, fetched_at, self.as_of_ms)
            self._write(data)
        except RefreshFailed as failed:
            self._failed(failed)
            return False
        self.as_of_ms = answered
        self.on_refresh("ok")
        if self.failures:
            logger.info("meterkit agent: balance snapshot refreshed again after %d failed attempt(s)", self.failures)
            self.failures = 0
            self._save_status()
        return True

    def _fetch(self, as_of_ms: int) -> Any:
        try:
            response = self.session.get(
                self.url, params={"as_of": iso(as_of_ms)}, timeout=self.cfg.request_timeout_millis / 1000.0
            )
        except requests.RequestException as exc:
            reason = f"cannot reach the ledger at {self.cfg.ledger_url} ({type(exc).__name__})"
            raise RefreshFailed(reason, "unreachable") from None
        if response.status_code != 200:
            hint = "; check ledger_url, org_id and token" if response.status_code in (401, 403, 404) else ""
            raise RefreshFailed(
                f"the ledger answered HTTP {response.status_code}: {self._scrub(response.text[:200])}{hint}",
                "http_error",
            )
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise RefreshFailed("the ledger's answer is not JSON", "bad_answer") from None

    def _scrub(self, text: str) -> str:
        token = self.cfg.token.get_secret_value() if self.cfg.token else None
        return text.replace(token, "***") if token else text

    def _write(self, data: bytes) -> None:
        for path in self.paths:
            try:
                write_atomically(path, data)
            except OSError as exc:
                raise RefreshFailed(f"cannot write {path}: {exc.strerror or exc}", "write_failed") from None

    def _failed(self, failed: RefreshFailed) -> None:
        self.on_refresh(failed.outcome)
        if not self.failures:  # once per streak; status keeps the latest reason
            logger.warning(
                "meterkit agent: cannot refresh the balance snapshot: %s; the snapshot in place is kept "
                "(caps follow the fallback policy once it is stale)",
                failed,
            )
        self.failures += 1
        self.last_error, self.last_error_at = str(failed), iso(time.time_ns() // 1_000_000)
        self._save_status()

    def _save_status(self) -> None:
        doc = {
            "pid": os.getpid(),
            "ledger_url": self.cfg.ledger_url,
            "interval_seconds": self.cfg.interval_millis / 1000.0,
            "paths": [str(p) for p in self.paths],
            "failures_in_a_row": self.failures,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }
        try:
            write_atomically(self.status_path, orjson.dumps(doc))
        except OSError as exc:
            logger.warning("meterkit agent: cannot write %s: %s", self.status_path, exc.strerror)


def _snapshot(answer: Any, asked_ms: int, fetched_at: str, floor_ms: int | None) -> tuple[bytes, int]:
    """The snapshot file's bytes from the ledger's answer, and its ``as_of`` (ms), checked
    by the SDK's own reader. The ledger may answer an earlier ``as_of`` than asked (it then
    covers less), never a later one: this host may not have delivered what lies between."""
    if not isinstance(answer, dict) or not isinstance(answer.get("balances"), list):
        raise RefreshFailed("the ledger's answer has no list of balances", "bad_answer")
    try:
        as_of_ms = parse_instant(answer.get("as_of"), "as_of") // 1_000_000
    except InstantError as exc:
        raise RefreshFailed(f"the ledger's answer: {exc}", "bad_answer") from None
    if as_of_ms > asked_ms:
        raise RefreshFailed(
            f"the ledger answered as_of {iso(as_of_ms)}, later than asked ({iso(asked_ms)})", "bad_answer"
        )
    if floor_ms is not None and as_of_ms < floor_ms:
        raise RefreshFailed(f"the ledger answered as_of {iso(as_of_ms)}, before the snapshot in place", "bad_answer")
    notified = answer.get("notified", [])
    doc = {"as_of": iso(as_of_ms), "fetched_at": fetched_at, "balances": answer["balances"], "notified": notified}
    data = orjson.dumps(doc)
    try:
        parse_snapshot(data)
    except ValueError as exc:
        raise RefreshFailed(f"the ledger's answer: {exc}", "bad_answer") from None
    return data, as_of_ms


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The keeper's status file, or None (no keeper configured, or it never started)."""
    try:
        doc: dict[str, Any] = orjson.loads((state_dir / STATUS_NAME).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc
