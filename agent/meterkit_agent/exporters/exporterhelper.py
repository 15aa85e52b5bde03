"""What every HTTP exporter shares: the delivery rules, one session, retry settings,
request chunks and the ``Idempotency-Key``; and :class:`IngestExporter`, the base of the
exporters that POST batches.

The delivery rules are small pure functions with table-driven tests. What is retried and
what is final is decided in :func:`classify`; nothing else in the agent decides it.
Retried: 408, 429, every 5xx, connection errors and timeouts. Paused: 401, 403 and 404,
which say the destination or its credentials are wrong, not the data, and a redirect (the
URL moved; :mod:`.transport` follows none); delivery keeps
trying with backoff (and says so loudly) until the configuration is fixed, and nothing is
dead-lettered for them. Final: any other 4xx, which isolates the bad measurements (from
the backend's answer if it names them, else by splitting the batch) so the good ones are
delivered and the bad ones are dead-lettered with the backend's reason.

An exporter is called by one delivery thread at a time, so each keeps one session
(:mod:`.transport`: connection pooling, TLS) without sharing it across threads.

Every ingest request carries the audit journal's head (``X-Meterkit-Journal`` and
``X-Meterkit-Journal-Head: <seq>:<hash>``) when the pipeline provides it through
:attr:`IngestExporter.journal_head`: a backend that keeps it (the ledger does) anchors
the journal off the agent's disk (docs/audit-journal.md). And ``Meterkit-Validated``,
when the pipeline's last processor validated every measurement of the request
(:attr:`IngestExporter.validated_token`): a ledger holding the same catalog trusts an
authenticated request that says so, instead of validating it again. And
``X-Meterkit-Lease-Epoch``: the agent's lease epoch (:mod:`..lease`), checked just before
each request (:attr:`IngestExporter.fence`), so a leader that lost it sends nothing more.

A measurement may carry two keys besides m3ter's: ``correction`` (a reversal's or a
replacement's mark) and ``batch`` (a backfill's id), see :mod:`meterkit._corrections`. The
exporters whose backend knows them (ledger, HTTP, file) pass them on unchanged; the others
send :func:`without_extensions` and name the pipeline's own record in a dead letter
(:func:`restored`), since the pipeline finds what was refused by identity.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import replace
from itertools import accumulate, count
from operator import add, itemgetter
from typing import Any, Literal, TypeVar, cast

import orjson
import requests
from pydantic import Field

from meterkit._corrections import EXTENSION_KEYS

from ..component import Misconfigured, Rejected, RetryLater, Settings
from ..credentials import shown_url
from .transport import TlsConfig, session

Outcome = Literal["ok", "retry", "pause", "isolate"]

#: The journal carried on ingest requests: its id, and its head as ``<seq>:<hash>``.
JOURNAL_HEADER = "X-Meterkit-Journal"
JOURNAL_HEAD_HEADER = "X-Meterkit-Journal-Head"

#: Sent when every measurement of a request passed the agent's validate processor: that
#: processor's ``validation_token`` (rules and catalog). A ledger that holds the same
#: catalog, and has authenticated the request, need not validate it again.
VALIDATED_HEADER = "Meterkit-Validated"
LEASE_EPOCH_HEADER = "X-Meterkit-Lease-Epoch"

#: Statuses that mean "wrong URL or credentials": never the data's fault.
PAUSE_STATUSES = frozenset({401, 403, 404})


class RetryConfig(Settings):
    initial_interval_millis: int = Field(200, gt=0)
    max_interval_millis: int = Field(30_000, gt=0)
    request_timeout_millis: int = Field(10_000, gt=0)


def classify(status: int) -> Outcome:
    """The retry predicate: what to do with an HTTP status."""
    if 200 <= status < 300:
        return "ok"
    if status in (408, 429) or 500 <= status < 600:
        return "retry"
    if status in PAUSE_STATUSES:
        return "pause"
    if 400 <= status < 500:
        return "isolate"
    if 300 <= status < 400:
        return "pause"  # the URL moved: follow it in the configuration, not blindly (a POST
        # answered 301/302 would be sent again as a GET, whose 200 would look delivered)
    return "retry"  # 1xx from an ingest endpoint: a proxy misbehaving; try again


def parse_retry_after(value: str | None, now: float | None = None, cap_seconds: float = 300.0) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date, RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap_seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), cap_seconds)


def idempotency_key(uids: Iterable[str]) -> str:
    """The ``Idempotency-Key`` of a request: a digest of its uids, independent of order,
    so every retry of the same measurements carries the same key. It is sha256 over each
    sorted uid followed by a line feed, hashed in one piece."""
    return uids_sha256(uids)[:48]


def uids_sha256(uids: Iterable[str]) -> str:
    """sha256 (hex) of the sorted uids, each followed by ``\n``."""
    ordered = sorted(uids)
    if not ordered:
        return hashlib.sha256().hexdigest()
    ordered.append("")
    return hashlib.sha256("\n".join(ordered).encode()).hexdigest()


class Serialised(list[dict[str, Any]]):
    """Measurements that carry their JSON, written once by the pipeline (sorted keys, the
    bytes each one's content hash covers), so an exporter puts those bytes in its request
    body instead of serialising the records again. ``encoded[i]`` is ``self[i]``'s JSON. A
    slice or a copy is a plain list, whose records an exporter serialises itself."""

    def __init__(self, records: list[dict[str, Any]], encoded: list[bytes]) -> None:
        super().__init__(records)
        self.encoded = encoded
        self._shared: dict[Hashable, Any] = {}
        self._lock = threading.Lock()

    def shared(self, key: Hashable, make: Callable[[], T]) -> T:
        """``make()``, made once per ``key`` for this batch, whichever destination asks
        first: the destinations a pipeline hands one batch to build the same requests from
        it (:meth:`IngestExporter.requests_for`). One that asks while another makes it waits."""
        with self._lock:
            found = self._shared.get(key)
            if found is None:
                found = self._shared[key] = make()
            return cast(T, found)


Encoded = tuple[dict[str, Any], bytes]
#: A request's body and the headers that say what it holds (``Idempotency-Key``,
#: ``Content-Encoding``): the same for every exporter of a kind sending the same records.
Encoding = tuple[bytes, dict[str, str]]
T = TypeVar("T")


def without_extensions(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """``records`` without ``correction`` and ``batch``, for a backend that does not know
    them; and, by the ``id()`` of each copy made, the record it was copied from.

    Only a record that carries either key is copied (and serialised again, with sorted keys
    as the pipeline does); the others, and their bytes (:class:`Serialised`), go as they
    are, so a batch without corrections or backfills costs one pass over its records."""
    if not any(map(_extended, records)):
        return records, {}
    encoded = records.encoded if isinstance(records, Serialised) else None
    plain: list[dict[str, Any]] = []
    pieces: list[bytes] = []
    copied: dict[int, dict[str, Any]] = {}
    for i, record in enumerate(records):
        if _extended(record):
            copy = {k: v for k, v in record.items() if k not in EXTENSION_KEYS}
            copied[id(copy)] = record
            plain.append(copy)
            if encoded is not None:
                pieces.append(orjson.dumps(copy, option=orjson.OPT_SORT_KEYS))
        else:
            plain.append(record)
            if encoded is not None:
                pieces.append(encoded[i])
    return (Serialised(plain, pieces) if encoded is not None else plain), copied


def restored(rejected: list[Rejected], copied: dict[int, dict[str, Any]]) -> list[Rejected]:
    """Dead letters that name the records :func:`without_extensions` copied from, not the
    copies: the pipeline matches what was refused to its batch by identity."""
    if not copied:
        return rejected
    return [replace(r, measurement=copied.get(id(r.measurement), r.measurement)) for r in rejected]


def _extended(record: dict[str, Any]) -> bool:
    return "correction" in record or "batch" in record


def chunks(records: list[dict[str, Any]], max_count: int, max_bytes: int) -> Iterator[list[Encoded]]:
    """Split records into requests of at most ``max_count`` items and ``max_bytes`` of JSON,
    greedily, in order (a record alone over ``max_bytes`` still gets a request of its own).

    Each record is serialised once: by the pipeline (:class:`Serialised`), or here;
    :func:`request_body` joins the pieces. Where each request ends is found per request,
    by bisecting the running total of the pieces' sizes, not record by record.
    """
    envelope = len(b'{"measurements":[]}')
    encoded: list[bytes] = records.encoded if isinstance(records, Serialised) else list(map(orjson.dumps, records))
    if not records:
        return
    # ends[j]: the bytes of records[:j], each with its comma
    ends = list(map(add, accumulate(map(len, encoded), initial=0), count()))
    start = 0
    while start < len(records):
        # records[start:stop] fit if envelope + ends[stop] - ends[start] <= max_bytes
        stop = (
            bisect_right(ends, max_bytes - envelope + ends[start], start + 1, min(len(records), start + max_count) + 1)
            - 1
        )
        stop = max(stop, start + 1)
        yield list(zip(records[start:stop], encoded[start:stop], strict=True))
        start = stop


def request_body(chunk: list[Encoded]) -> bytes:
    return b'{"measurements":[' + b",".join(map(_data, chunk)) + b"]}"


_record, _data, _uid = itemgetter(0), itemgetter(1), itemgetter("uid")


def short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


def answer(response: requests.Response) -> str:
    """What a backend said, for a dead letter's detail."""
    return f"HTTP {response.status_code}: {response.text[:2000]}"


class IngestExporter:
    """POSTs ``{"measurements": [...]}`` batches; isolates bad records on a final 4xx."""

    def __init__(
        self,
        name: str,
        url: str,
        retry: RetryConfig,
        max_count: int = 1000,
        max_bytes: int = 500_000,
        tls: TlsConfig | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.timeout = retry.request_timeout_millis / 1000.0
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.session = session(tls, **{"Content-Type": "application/json"})
        self.requests_sent = 0
        self.last_answer = ""  # for the audit journal: what the backend said last
        #: set by the pipeline: (journal id, "<seq>:<hash>") to carry on each request, or None
        self.journal_head: Callable[[], tuple[str, str] | None] | None = None
        #: set by the pipeline when its last processor validates every record it passes on:
        #: that processor's token, sent as ``Meterkit-Validated``
        self.validated_token: str | None = None
        #: set by the pipeline: raises if this agent may no longer send, else its lease epoch
        self.fence: Callable[[], int | None] | None = None

    def headers(self) -> dict[str, str]:
        return {}

    def on_unauthorized(self) -> bool:
        """Called on a 401; True if credentials were refreshed and the request may be retried."""
        return False

    def on_accepted(self) -> None:
        """Called when the backend accepted a request."""

    def export(self, records: list[dict[str, Any]]) -> list[Rejected]:
        rejected: list[Rejected] = []
        for chunk, encoding in self.requests_for(records):
            rejected.extend(self._deliver(chunk, encoding))
        return rejected

    def requests_for(self, records: list[dict[str, Any]]) -> Iterable[tuple[list[Encoded], Encoding]]:
        """``records`` cut into requests, each with its body (:meth:`encode`).

        Every exporter of one kind and the same limits cuts and encodes a batch the same
        way, so the requests of a batch the pipeline serialised (:class:`Serialised`, handed
        to each destination of a pipeline) are built once, by whichever destination sends
        first, and reused by the others: a second destination costs its own requests, not
        a second serialisation."""
        if not isinstance(records, Serialised):
            return ((chunk, self.encode(chunk)) for chunk in chunks(records, self.max_count, self.max_bytes))
        return records.shared(
            (type(self).encode, self.max_count, self.max_bytes),
            lambda: [(chunk, self.encode(chunk)) for chunk in chunks(records, self.max_count, self.max_bytes)],
        )

    def encode(self, chunk: list[Encoded]) -> Encoding:
        """A request's body: ``{"measurements": [...]}``, gzipped (level 1: most of gzip's
        saving on this JSON at a fraction of its cost), keyed by its uids. What an exporter's
        ``encode`` returns may depend on the chunk alone: every exporter of its class
        sending the same batch within the same limits shares it (:meth:`requests_for`)."""
        body = gzip.compress(request_body(chunk), compresslevel=1)
        return body, {"Idempotency-Key": idempotency_key(map(_uid, map(_record, chunk))), "Content-Encoding": "gzip"}

    def _post(self, chunk: list[Encoded], encoding: Encoding | None = None) -> requests.Response:
        body, described = encoding or self.encode(chunk)
        headers = {**self.headers(), **described}
        head = self.journal_head() if self.journal_head is not None else None
        if head is not None:
            headers[JOURNAL_HEADER], headers[JOURNAL_HEAD_HEADER] = head
        if self.validated_token is not None:
            headers[VALIDATED_HEADER] = self.validated_token
        if self.fence is not None and (epoch := self.fence()) is not None:
            headers[LEASE_EPOCH_HEADER] = str(epoch)
        return self._send(body, headers)

    def _send(self, body: bytes, headers: dict[str, str]) -> requests.Response:
        self.requests_sent += 1
        try:
            return self.session.post_bytes(self.url, body, headers, self.timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RetryLater(f"{type(exc).__name__}: {short(exc)}") from None

    def _deliver(self, chunk: list[Encoded], encoding: Encoding | None = None) -> list[Rejected]:
        response = self._post(chunk, encoding)
        self.last_answer = f"HTTP {response.status_code} {response.text[:200]}".rstrip()
        outcome = classify(response.status_code)
        if outcome == "ok":
            self.on_accepted()
            return []
        if response.status_code == 401 and self.on_unauthorized():
            raise RetryLater("401: token refreshed", 0.0)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if outcome == "pause":
            where = f"{self.name} ({shown_url(self.url)}{_redirect(response)})"
            raise Misconfigured(where, response.status_code, retry_after)
        if outcome == "retry":
            raise RetryLater(f"HTTP {response.status_code}", retry_after)
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
            return [Rejected(chunk[0][0], f"rejected_by_backend:http_{response.status_code}", answer(response))]
        middle = len(chunk) // 2
        return self._deliver(chunk[:middle]) + self._deliver(chunk[middle:])

    def shutdown(self) -> None:
        self.session.close()


def _redirect(response: requests.Response) -> str:
    location = response.headers.get("Location") if 300 <= response.status_code < 400 else None
    return f", which redirects to {shown_url(location)[:200]}" if location else ""


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
