"""Configuration: explicit argument, then ``METERKIT_*`` environment variable, then default.

A bad argument raises :class:`ConfigError` (the caller can fix it now); a bad environment
value logs a warning and falls back to the default (a typo in a deployment manifest must
not take the application down). Names carry their unit (``..._MILLIS``, ``..._BYTES``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_type_hints
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError

from ._errors import ConfigError
from ._guard import logger
from ._permissions import group_id

ENV_CATALOG = "METERKIT_CATALOG"
ENV_SPOOL_DIR = "METERKIT_SPOOL_DIR"
# A group name or id: share the spool with that group (02770 directories, 0660 files) so
# another user, the agent's, can read it. Unset: the spool is private (0700, 0600).
ENV_SPOOL_SHARED_GROUP = "METERKIT_SPOOL_SHARED_GROUP"
ENV_MODE = "METERKIT_MODE"
ENV_DURABILITY = "METERKIT_DURABILITY"
ENV_FLUSH_INTERVAL_MILLIS = "METERKIT_FLUSH_INTERVAL_MILLIS"
ENV_MAX_QUEUE_SIZE = "METERKIT_MAX_QUEUE_SIZE"
ENV_MAX_BATCH_SIZE = "METERKIT_MAX_BATCH_SIZE"
ENV_QUEUE_FULL_TIMEOUT_MILLIS = "METERKIT_QUEUE_FULL_TIMEOUT_MILLIS"
ENV_MAX_SEGMENT_BYTES = "METERKIT_MAX_SEGMENT_BYTES"
ENV_MAX_SEGMENT_AGE_SECONDS = "METERKIT_MAX_SEGMENT_AGE_SECONDS"
ENV_MAX_SPOOL_BYTES = "METERKIT_MAX_SPOOL_BYTES"
ENV_FSYNC = "METERKIT_FSYNC"
ENV_SHUTDOWN_TIMEOUT_MILLIS = "METERKIT_SHUTDOWN_TIMEOUT_MILLIS"
ENV_OTEL_CONTEXT = "METERKIT_OTEL_CONTEXT"
# ``direct``: the process posts its measurements itself (``_directsink``), for runtimes
# with no agent beside them. The token is read by the sink from METERKIT_DIRECT_TOKEN or
# the file, never kept in Settings (whose repr may be logged).
ENV_SINK = "METERKIT_SINK"
ENV_DIRECT_URL = "METERKIT_DIRECT_URL"
ENV_DIRECT_TOKEN_FILE = "METERKIT_DIRECT_TOKEN_FILE"  # noqa: S105 - a variable name
ENV_DIRECT_TIMEOUT_SECONDS = "METERKIT_DIRECT_TIMEOUT_SECONDS"


ENV_PROJECT = "METERKIT_PROJECT"


def project_dir() -> Path:
    """The project the defaults belong to: ``METERKIT_PROJECT`` (a directory), else the
    current working directory. Resolved, so every spelling of one directory is one project."""
    try:
        return Path(os.environ.get(ENV_PROJECT) or os.getcwd()).resolve()
    except FileNotFoundError:  # the working directory was deleted: no project to name
        raise ConfigError(f"the current directory is gone: set {ENV_PROJECT} or {ENV_SPOOL_DIR}") from None


def project_state_dir(project: Path | None = None) -> Path:
    """``$XDG_STATE_HOME/meterkit/<name>-<hash>`` (else ``~/.local/state/...``): the default
    home of one project's spool, agent state and local ledger. Named by the project
    directory's name and a hash of its full path, so two apps never share a default spool
    (and a ``reconcile`` never shows one app's data as another's) while the name stays
    readable. ``project``: default :func:`project_dir`."""
    where = (project or project_dir()).resolve()
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in where.name)[:40] or "root"
    digest = hashlib.sha256(os.fsencode(where)).hexdigest()[:12]
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "meterkit" / f"{name}-{digest}"


def default_spool_dir() -> Path:
    """``<project state dir>/spool`` (:func:`project_state_dir`); the agent's ``spool``
    receiver defaults to the same directory when run from the same project."""
    return project_state_dir() / "spool"


Mode = Literal["production", "strict"]
Durability = Literal["buffered", "sync"]
SinkKind = Literal["spool", "direct"]


@dataclass(frozen=True)
class Settings:
    """Resolved SDK settings. See the README's configuration table for each one."""

    catalog: Path | None = None
    spool_dir: Path = Path()
    spool_shared_group: str | None = None
    mode: Mode = "production"
    durability: Durability = "buffered"
    flush_interval_millis: int = 200
    # Measurements, not bytes: room for a burst of a million without record() waiting.
    # Each queued one holds 11 deque slots (88 bytes), its time and its copied dicts: about
    # 300 bytes with one small dict, so at most about 300 MiB when full (docs/spool-format.md).
    max_queue_size: int = 1_048_576
    # A full batch is one spool frame, which the agent sends as requests of at most 1,000
    # measurements (m3ter's limit): 4,000 fills four, where 4,096 made a fifth of 96 that
    # costs every destination (and the backend) a whole request.
    max_batch_size: int = 4_000
    queue_full_timeout_millis: int = 1_000
    max_segment_bytes: int = 64 * 1024 * 1024
    max_segment_age_seconds: float = 300.0
    max_spool_bytes: int = 1024 * 1024 * 1024
    fsync: bool = False
    shutdown_timeout_millis: int = 5_000
    otel_context: bool = True
    sink: SinkKind = "spool"
    direct_url: str | None = None
    direct_token_file: Path | None = None
    # The most one batch may take, every retry included, before it is counted as lost.
    direct_timeout_seconds: float = 10.0


_ENV = {
    "catalog": ENV_CATALOG,
    "spool_dir": ENV_SPOOL_DIR,
    "spool_shared_group": ENV_SPOOL_SHARED_GROUP,
    "mode": ENV_MODE,
    "durability": ENV_DURABILITY,
    "flush_interval_millis": ENV_FLUSH_INTERVAL_MILLIS,
    "max_queue_size": ENV_MAX_QUEUE_SIZE,
    "max_batch_size": ENV_MAX_BATCH_SIZE,
    "queue_full_timeout_millis": ENV_QUEUE_FULL_TIMEOUT_MILLIS,
    "max_segment_bytes": ENV_MAX_SEGMENT_BYTES,
    "max_segment_age_seconds": ENV_MAX_SEGMENT_AGE_SECONDS,
    "max_spool_bytes": ENV_MAX_SPOOL_BYTES,
    "fsync": ENV_FSYNC,
    "shutdown_timeout_millis": ENV_SHUTDOWN_TIMEOUT_MILLIS,
    "otel_context": ENV_OTEL_CONTEXT,
    "sink": ENV_SINK,
    "direct_url": ENV_DIRECT_URL,
    "direct_token_file": ENV_DIRECT_TOKEN_FILE,
    "direct_timeout_seconds": ENV_DIRECT_TIMEOUT_SECONDS,
}

_POSITIVE = {
    "flush_interval_millis",
    "max_queue_size",
    "max_batch_size",
    "max_segment_bytes",
    "max_segment_age_seconds",
    "max_spool_bytes",
    "direct_timeout_seconds",
}


_ADAPTERS: dict[str, TypeAdapter[Any]] = {name: TypeAdapter(hint) for name, hint in get_type_hints(Settings).items()}


def _check(name: str, value: Any) -> Any:
    parsed = _ADAPTERS[name].validate_python(value, strict=False)
    if name in _POSITIVE and parsed <= 0:
        raise ValueError(f"{name} must be positive")
    if name == "queue_full_timeout_millis" and parsed < 0:
        raise ValueError(f"{name} cannot be negative")
    if name == "spool_shared_group":
        try:
            group_id(parsed)
        except (KeyError, ImportError):
            raise ValueError(f"no group named {parsed!r} on this host") from None
    if name == "direct_url":
        url = urlsplit(parsed)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("expected an http:// or https:// URL with a host")
    return parsed


def resolve(**given: Any) -> Settings:
    """Build :class:`Settings` from arguments (``None`` = not given), environment and defaults."""
    unknown = set(given) - set(_ENV)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}; known: {', '.join(_ENV)}")
    values: dict[str, Any] = {}
    for name, env in _ENV.items():
        value = given.get(name)
        if value is not None:
            try:
                values[name] = _check(name, value)
            except (ValidationError, ValueError) as exc:
                raise ConfigError(f"{name}={value!r} is not valid: {_first(exc)}") from None
            continue
        raw = os.environ.get(env)
        if raw is None or raw == "":
            continue
        try:
            values[name] = _check(name, raw)
        except (ValidationError, ValueError) as exc:
            logger.log(
                logging.WARNING,
                "meterkit: ignoring %s=%r (%s); using the default",
                env,
                raw,
                _first(exc),
            )
    if "spool_dir" not in values:  # computed only when needed: it reads the working directory
        values["spool_dir"] = default_spool_dir()
    if values.get("sink") == "direct" and not values.get("direct_url"):
        if given.get("sink") is not None:
            raise ConfigError(f'sink="direct" needs direct_url (or {ENV_DIRECT_URL})')
        logger.warning("meterkit: ignoring %s=direct (%s is not set); using the spool", ENV_SINK, ENV_DIRECT_URL)
        values["sink"] = "spool"
    settings = Settings(**values)
    if settings.max_batch_size > settings.max_queue_size:
        raise ConfigError("max_batch_size cannot exceed max_queue_size")
    return settings


def _first(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return str(exc.errors()[0]["msg"])
    return str(exc)


# -- limits (``meterkit.allow``): resolved in the same order, kept apart from the client's --

ENV_PLANS = "METERKIT_PLANS"
ENV_LIMITS_FALLBACK = "METERKIT_LIMITS_FALLBACK"
ENV_BALANCES_PATH = "METERKIT_BALANCES_PATH"
ENV_BALANCES_MAX_AGE_SECONDS = "METERKIT_BALANCES_MAX_AGE_SECONDS"
ENV_LIMITS_STATE_DIR = "METERKIT_LIMITS_STATE_DIR"
ENV_REDIS_URL = "METERKIT_REDIS_URL"
ENV_REDIS_TIMEOUT_MILLIS = "METERKIT_REDIS_TIMEOUT_MILLIS"

Fallback = Literal["fail_open", "fail_closed"]


@dataclass(frozen=True)
class LimitSettings:
    """Settings of limit decisions. ``balances_path`` defaults to ``<spool_dir>/balances.json``
    (where the agent writes the snapshot); ``limits_state_dir`` to
    ``/dev/shm/meterkit-<uid>/<project>-<hash>``, one per spool (``_hostshare.default_state_dir``),
    so two applications never share host limits by default."""

    plans: Path | None = None
    limits_fallback: Fallback = "fail_open"
    balances_path: Path = Path("balances.json")
    # The agent refreshes the snapshot every 30 s by default: ten missed refreshes is stale.
    balances_max_age_seconds: float = 300.0
    limits_state_dir: Path = Path()
    redis_url: str | None = None
    redis_timeout_millis: int = 100
    mode: Mode = "production"


LIMIT_SETTINGS = {
    "plans": ENV_PLANS,
    "limits_fallback": ENV_LIMITS_FALLBACK,
    "balances_path": ENV_BALANCES_PATH,
    "balances_max_age_seconds": ENV_BALANCES_MAX_AGE_SECONDS,
    "limits_state_dir": ENV_LIMITS_STATE_DIR,
    "redis_url": ENV_REDIS_URL,
    "redis_timeout_millis": ENV_REDIS_TIMEOUT_MILLIS,
}
_LIMIT_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(hint) for name, hint in get_type_hints(LimitSettings).items()
}


def _check_limit_setting(name: str, value: Any) -> Any:
    parsed = _LIMIT_ADAPTERS[name].validate_python(value, strict=False)
    if name in ("balances_max_age_seconds", "redis_timeout_millis") and parsed <= 0:
        raise ValueError(f"{name} must be positive")
    return parsed


def resolve_limits(spool_dir: Path, mode: str, **given: Any) -> LimitSettings:
    """:class:`LimitSettings` from arguments (``None`` = not given), environment and
    defaults; a bad argument raises :class:`ConfigError`, a bad environment value warns."""
    values: dict[str, Any] = {"mode": mode}
    for name, env in LIMIT_SETTINGS.items():
        value = given.get(name)
        if value is not None:
            try:
                values[name] = _check_limit_setting(name, value)
            except (ValidationError, ValueError) as exc:
                raise ConfigError(f"{name}={value!r} is not valid: {_first(exc)}") from None
            continue
        raw = os.environ.get(env)
        if raw:
            try:
                values[name] = _check_limit_setting(name, raw)
            except (ValidationError, ValueError) as exc:
                shown = "(hidden: it may hold a password)" if name == "redis_url" else repr(raw)
                logger.warning("meterkit: ignoring %s=%s (%s); using the default", env, shown, _first(exc))
    from ._hostshare import default_state_dir  # a leaf; imported late to keep settings first

    values.setdefault("balances_path", spool_dir / "balances.json")
    values.setdefault("limits_state_dir", default_state_dir(spool_dir))
    return LimitSettings(**values)
