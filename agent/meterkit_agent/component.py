"""What every pipeline component shares, and nothing more.

The agent is assembled from configuration, as the OpenTelemetry Collector is: a
component is named ``type`` or ``type/name``, and each kind (``receivers``,
``processors``, ``exporters``) keeps a registry from a type to the module that
implements it. That module defines a :data:`FACTORY`: the component's configuration
model and the function that builds it. Configuration lives with its component, so
adding one is one new module, its tests, and one registry line; the registry names the
module by its dotted path and imports it only when a configuration asks for it, so an
agent that exports to Stripe never imports the ledger's database layer.

The two outcomes a component can give besides success are here too: :class:`Rejected`
(this measurement can never be delivered as it is: dead-letter it, with the reason) and
:class:`RetryLater` (nothing is wrong with the data: try the same thing again later).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, Protocol, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict

from meterkit import Catalog, load_catalog

Measurement = dict[str, Any]


class Settings(BaseModel):
    """Base of every component's configuration: an unknown key is an error, never ignored."""

    model_config = ConfigDict(extra="forbid")


def _host_port(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("endpoint must be host:port, e.g. 127.0.0.1:4319")
    return v


#: A listening address. Every listener defaults to loopback; another host must be asked for.
HostPort = Annotated[str, AfterValidator(_host_port)]


class RetryLater(Exception):
    """A transient failure: try the same request again later."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Misconfigured(RetryLater):
    """The destination or its credentials are wrong, not the data (HTTP 401, 403, 404):
    delivery pauses and keeps trying with backoff until the configuration is fixed.
    Nothing is dead-lettered for it (DESIGN.md §3)."""

    def __init__(self, destination: str, status: int, retry_after: float | None = None) -> None:
        super().__init__(f"{destination} answered HTTP {status}: check its URL and credentials", retry_after)
        self.destination = destination
        self.status = status


@dataclass(frozen=True)
class Rejected:
    """A measurement refused for good, alone: by a processor, the serialiser or a backend.
    ``stage`` says where (``validate``, ``derive``, ``serialise``, ``export:<exporter>``)."""

    measurement: dict[str, Any]
    reason: str
    detail: str = ""
    stage: str = ""


class Receiver(Protocol):
    """A pipeline's source. Receivers start, and shut down within a timeout."""

    def start(self) -> None: ...

    def shutdown(self, timeout: float) -> None: ...


class ReceiverHost(Protocol):
    """What the pipeline offers a receiver it builds. The spool is the pipeline's only
    queue: every receiver either names a spool to tail or writes one and names it."""

    state_dir: Path
    catalog: Catalog | None  # the validate processor's, so receivers refuse what it would

    def tail(self, directory: Path, poll_interval: float) -> None: ...


#: A processor is a plain callable from a batch to (kept, rejected); none drops silently.
Processor = Callable[[list[Measurement]], tuple[list[Measurement], list[Rejected]]]


class Exporter(Protocol):
    """Where delivered measurements go. ``export`` returns what the backend refused for
    good and raises :class:`RetryLater` for anything transient."""

    name: str

    def export(self, records: list[Measurement]) -> list[Rejected]: ...

    def shutdown(self) -> None: ...


C = TypeVar("C")


@dataclass(frozen=True)
class Factory(Generic[C]):
    """How a component type is configured and built. ``create`` takes the component id
    (``type/name``), its validated configuration and, for receivers, the pipeline's
    :class:`ReceiverHost`."""

    config: type[BaseModel]
    create: Callable[..., C]


def type_of(cid: str) -> str:
    """``"http/internal"`` → ``"http"``."""
    return cid.split("/", 1)[0]


def factory(registry: dict[str, str], cid: str) -> Factory[Any] | None:
    """The factory of a component id's type, importing its module; None if unknown."""
    module = registry.get(type_of(cid))
    if module is None:
        return None
    found: Factory[Any] = importlib.import_module(module).FACTORY
    return found


@functools.lru_cache(maxsize=8)
def catalog_at(path: Path | None) -> Catalog | None:
    """The catalog at ``path``, loaded once for every component that names it."""
    return load_catalog(path) if path else None
