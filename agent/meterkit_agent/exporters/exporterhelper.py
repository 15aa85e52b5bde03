"""Exporters: where delivered measurements go.

An exporter's ``export(records)`` returns the measurements the backend refused for good
(:class:`Rejected`) and raises :class:`RetryLater` for anything transient. It is called by
one delivery thread at a time, so each keeps one ``requests.Session`` (connection pooling)
without sharing it across threads.
"""

from __future__ import annotations

import base64
import gzip
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import orjson
import requests
import sqlalchemy.exc

from meterkit import MeasurementError
from meterkit._model import validate_wire

from .config import FileExporterConfig, HttpExporterConfig, LedgerExporterConfig, M3terExporterConfig, RetryConfig
from .delivery import Encoded, Rejected, RetryLater, chunks, classify, idempotency_key, parse_retry_after, request_body
from .ledger.store import Ledger

USER_AGENT = "meterkit-agent/0.1"


class Exporter(Protocol):
    name: str

    def export(self, records: list[dict[str, Any]]) -> list[Rejected]: ...

    def shutdown(self) -> None: ...


class IngestExporter:
    """POSTs ``{"measurements": [...]}`` batches; isolates bad records on a final 4xx."""

    def __init__(
        self, name: str, url: str, retry: RetryConfig, max_count: int = 1000, max_bytes: int = 500_000
    ) -> None:
        self.name = name
        self.url = url
        self.timeout = retry.request_timeout_millis / 1000.0
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": USER_AGENT, "Content-Type": "application/json"})
        self.requests_sent = 0
        self.last_answer = ""  # for the audit journal: what the backend said last

    def headers(self) -> dict[str, str]:
        return {}

    def on_unauthorized(self) -> bool:
        """Called on a 401; True if credentials were refreshed and the request may be retried."""
        return False

    def export(self, records: list[dict[str, Any]]) -> list[Rejected]:
        rejected: list[Rejected] = []
        for chunk in chunks(records, self.max_count, self.max_bytes):
            rejected.extend(self._deliver(chunk))
        return rejected

    def _post(self, chunk: list[Encoded]) -> requests.Response:
        body = gzip.compress(request_body(chunk), compresslevel=1)
        headers = {
            **self.headers(),
            "Idempotency-Key": idempotency_key(m["uid"] for m, _ in chunk),
            "Content-Encoding": "gzip",
        }
        self.requests_sent += 1
        try:
            return self.session.post(self.url, data=body, headers=headers, timeout=self.timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RetryLater(f"{type(exc).__name__}: {_short(exc)}") from None

    def _deliver(self, chunk: list[Encoded]) -> list[Rejected]:
        response = self._post(chunk)
        self.last_answer = f"HTTP {response.status_code} {response.text[:200]}".rstrip()
        outcome = classify(response.status_code)
        if outcome == "ok":
            return []
        if response.status_code == 401 and self.on_unauthorized():
            raise RetryLater("401: token refreshed", 0.0)
        if outcome == "retry":
            raise RetryLater(f"HTTP {response.status_code}", parse_retry_after(response.headers.get("Retry-After")))
        return self._isolate(chunk, response)

    def _isolate(self, chunk: list[Encoded], response: requests.Response) -> list[Rejected]:
        """A final 4xx: find the bad measurements, deliver the rest."""
        named = _named_errors(response, len(chunk))
        if named:
            bad = [
                Rejected(chunk[i][0], f"rejected_by_backend:{reason}", f"HTTP {response.status_code}: {detail}")
                for i, (reason, detail) in named.items()
            ]
            rest = [m for i, m in enumerate(chunk) if i not in named]
            return bad + (self._deliver(rest) if rest else [])
        if len(chunk) == 1:
            return [Rejected(chunk[0][0], f"rejected_by_backend:http_{response.status_code}", _answer(response))]
        middle = len(chunk) // 2
        return self._deliver(chunk[:middle]) + self._deliver(chunk[middle:])

    def shutdown(self) -> None:
        self.session.close()


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


def _answer(response: requests.Response) -> str:
    text = response.text
    return f"HTTP {response.status_code}: {text[:2000]}"


def _named_errors(response: requests.Response, size: int) -> dict[int, tuple[str, str]]:
    """Bad records by index, with (reason, that record's error), if the backend names them
    (meterkit's ledger does)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return {}
    named: dict[int, tuple[str, str]] = {}
    for e in errors:
        if isinstance(e, dict) and isinstance(e.get("index"), int) and 0 <= e["index"] < size:
            named[e["index"]] = (str(e.get("reason") or "invalid"), orjson.dumps(e).decode())
    return named


class M3terExporter(IngestExporter):
    """m3ter's ingest API: ``POST {base}/organizations/{orgId}/measurements`` with a bearer
    token, given or obtained by client-credentials exchange at ``{base}/oauth/token`` and
    refreshed before it expires (and on a 401)."""

    def __init__(self, name: str, cfg: M3terExporterConfig) -> None:
        super().__init__(name, f"{cfg.base_url.rstrip('/')}/organizations/{cfg.org_id}/measurements", cfg.retry)
        self.cfg = cfg
        self._token = cfg.token.get_secret_value() if cfg.token else None
        self._expires_at = float("inf") if cfg.token else 0.0
        self._lock = threading.Lock()

    def _exchange(self) -> None:
        assert self.cfg.client_id is not None and self.cfg.client_secret is not None
        basic = base64.b64encode(f"{self.cfg.client_id}:{self.cfg.client_secret.get_secret_value()}".encode()).decode()
        try:
            response = self.session.post(
                f"{self.cfg.base_url.rstrip('/')}/oauth/token",
                json={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {basic}"},
                timeout=self.timeout,
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RetryLater(f"token exchange: {type(exc).__name__}") from None
        if classify(response.status_code) != "ok":
            # Never echo the answer: it may contain credentials material.
            raise RetryLater(
                f"token exchange answered HTTP {response.status_code}",
                parse_retry_after(response.headers.get("Retry-After")),
            )
        body = response.json()
        self._token = str(body["access_token"])
        # Refresh five minutes early, as m3ter's own client does.
        self._expires_at = time.monotonic() + float(body.get("expires_in", 3600)) - 300

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                self._exchange()
            return {"Authorization": f"Bearer {self._token}"}

    def on_unauthorized(self) -> bool:
        if self.cfg.client_id is None:
            return False
        with self._lock:
            self._token, self._expires_at = None, 0.0
        return True


class HttpExporter(IngestExporter):
    """Any HTTP backend taking ``{"measurements": [...]}`` JSON."""

    def __init__(self, name: str, cfg: HttpExporterConfig) -> None:
        super().__init__(name, cfg.url, cfg.retry)
        self._headers = {k: v.get_secret_value() for k, v in cfg.headers.items()}

    def headers(self) -> dict[str, str]:
        return self._headers


class LedgerExporter:
    """Straight into a ledger database: the embedded default, no HTTP in between."""

    def __init__(self, name: str, cfg: LedgerExporterConfig) -> None:
        self.name = name
        self.org = cfg.org_id
        self.ledger = Ledger(cfg.db)

    def export(self, records: list[dict[str, Any]]) -> list[Rejected]:
        good, rejected = [], []
        for record in records:
            try:
                good.append(validate_wire(record))
            except MeasurementError as exc:
                rejected.append(Rejected(record, f"rejected_by_backend:{exc.reason}", str(exc)))
        try:
            new, duplicates = self.ledger.ingest(self.org, good)
        except sqlalchemy.exc.OperationalError as exc:
            raise RetryLater(f"ledger database: {_short(exc.orig or exc)}") from None
        self.last_answer = f"stored {new}, already stored {duplicates}"
        return rejected

    def shutdown(self) -> None:
        self.ledger.close()


class FileExporter:
    """Appends JSON lines (fsynced), for debugging a pipeline."""

    def __init__(self, name: str, cfg: FileExporterConfig) -> None:
        self.name = name
        self.path = Path(cfg.path)

    def export(self, records: list[dict[str, Any]]) -> list[Rejected]:
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise RetryLater(f"cannot write {self.path}: {exc.strerror}") from None
        self.last_answer = f"appended {len(records)} line(s) to {self.path}"
        return []

    def shutdown(self) -> None:
        pass


def build_exporter(cid: str, cfg: Any) -> Exporter:
    kind = cid.split("/", 1)[0]
    if kind == "m3ter":
        return M3terExporter(cid, cfg)
    if kind == "http":
        return HttpExporter(cid, cfg)
    if kind == "ledger":
        return LedgerExporter(cid, cfg)
    if kind == "file":
        return FileExporter(cid, cfg)
    if kind in ("openmeter", "stripe"):
        from .backends import OpenMeterExporter, StripeMeterEventsExporter

        return OpenMeterExporter(cid, cfg) if kind == "openmeter" else StripeMeterEventsExporter(cid, cfg)
    raise ValueError(f"unknown exporter type {kind!r}")
