"""The agent's configuration, in the OpenTelemetry Collector's shape.

::

    receivers:
      spool: {directory: /var/lib/meterkit/spool}
      http: {endpoint: "127.0.0.1:4319", token: "${METERKIT_AGENT_TOKEN}"}
    processors:
      validate: {catalog: meters.yaml}
      derive: {catalog: meters.yaml}
      enrich: {set: {other: {deployment: prod}}}
      batch: {max_measurements: 1000, max_bytes: 500000, timeout_millis: 1000}
    exporters:
      m3ter: {org_id: "...", token: "${M3TER_TOKEN}"}   # m3ter itself; base_url: a ledger's instead
    extensions:
      balances: {ledger_url: "http://127.0.0.1:8765", org_id: acme, token: "${LEDGER_TOKEN}"}
    service:
      state_dir: /var/lib/meterkit/agent
      extensions: [balances]
      pipelines:
        usage: {receivers: [spool, http], processors: [validate, derive, batch], exporters: [m3ter]}

Components are named ``type`` or ``type/name`` as in the Collector. ``extensions`` hold
what runs beside the pipeline and is no part of it, enabled by ``service.extensions`` as in
the Collector: ``balances`` keeps the SDK's balance snapshot fresh (``balances.py``). Each
component's settings model lives in the component's own module (``receivers/http.py`` defines
``HttpReceiverConfig``), found through its kind's registry; this module holds what is
the agent's as a whole: ``service``, the pipeline, telemetry, and the parsing that
collects every problem of a file in one pass. ``${VAR}`` (or
``${VAR:-default}``) is replaced from the environment before parsing, so secrets stay out
of the file; an unset variable without a default is an error that names it.

Every secret setting (a ``SecretStr``: ``token``, ``client_secret``, ``api_key``; and the
ledger exporter's ``db`` URL) may instead be read from a file: ``<setting>_file: PATH``
(``token_file``, ``client_secret_file``, ``db_file``), a file other users may not read (:mod:`.credentials`), as
Prometheus' ``bearer_token_file`` and Docker's and Kubernetes' mounted secrets work. Its
content is never printed: :func:`redacted` shows what a configuration resolved to with
every secret as ``***``.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from meterkit import CatalogError
from meterkit._yaml import LINE_KEY, load_yaml

from .balances import BalancesConfig
from .component import HostPort, Settings, factory, type_of
from .credentials import SecretFileError, read_secret_file
from .exporters import EXPORTERS
from .paths import default_state_dir, destination_dir
from .processors import PROCESSORS
from .receivers import RECEIVERS

#: Extension types, by the name used in ``extensions`` (the Collector's ``type[/name]``).
EXTENSIONS: dict[str, type[Settings]] = {"balances": BalancesConfig}

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: Settings that may hold a password without being typed a secret: a database URL (the
#: ledger exporter's ``db``, ``postgresql://user:password@host/db``) may be ``db_file``.
_SECRET_URLS = frozenset({"db"})
#: The m3ter exporter's token when ``agent run --to`` is given none (a ledger without auth).
NO_TOKEN = "none"  # noqa: S105 - a placeholder that authenticates nothing, not a secret


class ConfigFileError(Exception):
    """A configuration that cannot be used. ``problems`` are the lines to print."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class PipelineConfig(Settings):
    receivers: Annotated[list[str], Field(min_length=1)]
    processors: list[str] = Field(default_factory=list)
    exporters: Annotated[list[str], Field(min_length=1)]


class OtlpMetricsConfig(Settings):
    endpoint: str = "http://127.0.0.1:4318/v1/metrics"
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    interval_millis: int = Field(10_000, gt=0)


class PrometheusConfig(Settings):
    endpoint: HostPort = "127.0.0.1:9464"


class MetricsTelemetryConfig(Settings):
    otlp: OtlpMetricsConfig | None = None
    prometheus: PrometheusConfig | None = None


class TelemetryConfig(Settings):
    metrics: MetricsTelemetryConfig = MetricsTelemetryConfig()


class ServiceConfig(Settings):
    state_dir: Path = Field(default_factory=default_state_dir)
    telemetry: TelemetryConfig = TelemetryConfig()
    drain_timeout_millis: int = Field(10_000, gt=0)
    retain_segments_hours: float = Field(0, ge=0)
    #: A segment one destination has and another has not is kept at most this long after
    #: its last write; then the lagging one journals it as expired (0: kept until all have it).
    spool_retention_hours: float = Field(168, ge=0)
    extensions: list[str] = Field(default_factory=list)
    pipelines: dict[str, PipelineConfig]

    @field_validator("pipelines")
    @classmethod
    def _destinations(cls, v: dict[str, PipelineConfig]) -> dict[str, PipelineConfig]:
        """At least one pipeline, and each exporter in one of them: an exporter is a
        destination with one cursor over the spool, so one path leads to it."""
        if not v:
            raise ValueError("at least one pipeline is needed")
        seen: dict[str, str] = {}
        for name, pipe in v.items():
            for cid in pipe.exporters:
                if cid in seen:
                    raise ValueError(
                        f"exporter {cid!r} is in pipelines {seen[cid]!r} and {name!r}: each exporter is one"
                        " destination with its own progress, so it belongs to one pipeline"
                    )
                seen[cid] = name
        return v


class AgentConfig(BaseModel):
    """A validated configuration: component configs keyed by their ``type[/name]`` id."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    receivers: dict[str, Any]
    processors: dict[str, Any]
    exporters: dict[str, Any]
    extensions: dict[str, Any] = Field(default_factory=dict)
    service: ServiceConfig

    @property
    def pipeline(self) -> PipelineConfig:
        """The first pipeline."""
        return next(iter(self.service.pipelines.values()))

    @property
    def destinations(self) -> list[tuple[str, str]]:
        """Every destination as (pipeline, exporter id), in order: the first is the one
        whose progress the state directory itself holds."""
        return [(name, cid) for name, pipe in self.service.pipelines.items() for cid in pipe.exporters]

    def state_dir_of(self, cid: str) -> Path:
        """Where destination ``cid`` keeps its progress: the state directory itself for the
        first destination, ``destinations/<id>`` for the others (:func:`.paths.destination_dir`)."""
        return destination_dir(self.service.state_dir, cid, primary=cid == self.destinations[0][1])

    @property
    def balances(self) -> BalancesConfig | None:
        """The balance keeper's settings, if ``service.extensions`` enables one."""
        return next((self.extensions[e] for e in self.service.extensions if type_of(e) == "balances"), None)

    def component(self, kind: str, cid: str) -> Any:
        return getattr(self, kind)[cid]


def substitute_env(doc: Any, source: str = "config") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in the string values of a parsed document.

    Done after parsing, so a value from the environment can never change the YAML's
    structure, and comments are left alone. A value that is only a reference and resolves
    to an empty string becomes ``null`` (an optional setting left unset).
    """
    missing: list[str] = []

    def repl(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            if m.group(2) is not None:
                return m.group(2)
            missing.append(m.group(1))
            return ""
        return value

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str) and "${" in value:
            out = _ENV_REF.sub(repl, value)
            return None if out == "" and _ENV_REF.fullmatch(value) else out
        return value

    out = walk(doc)
    if missing:
        raise ConfigFileError(
            [f"{source}: environment variable {name} is not set (referenced as ${{{name}}})" for name in missing]
        )
    return out


def parse_config(doc: Any, source: str = "config") -> AgentConfig:
    """Validate a parsed document; every problem is collected, then raised together."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise ConfigFileError([f"{source}: expected a mapping with receivers, processors, exporters and service"])
    for key in sorted(set(doc) - {"receivers", "processors", "exporters", "extensions", "service"}):
        problems.append(f"{source}: unknown top-level key {key!r}")
    sections: dict[str, dict[str, Any]] = {}
    for kind, registry in (("receivers", RECEIVERS), ("processors", PROCESSORS), ("exporters", EXPORTERS)):
        built: dict[str, Any] = {}
        raw = doc.get(kind) or {}
        if not isinstance(raw, dict):
            problems.append(f"{source}: {kind} must be a mapping of component ids to settings")
            raw = {}
        for cid, settings in raw.items():
            found = factory(registry, str(cid))
            if found is None:
                problems.append(
                    f"{source}: {kind}.{cid}: unknown type {type_of(str(cid))!r}; known: {', '.join(registry)}"
                )
                continue
            try:
                settings = secret_files(found.config, settings, f"{source}: {kind}.{cid}")
                built[str(cid)] = found.config.model_validate(settings or {})
            except SecretFileError as exc:
                problems.append(str(exc))
            except ValidationError as exc:
                for err in exc.errors():
                    where = ".".join(str(p) for p in err["loc"])
                    problems.append(
                        f"{source}: {kind}.{cid}{'.' + where if where else ''}: "
                        + str(err["msg"]).removeprefix("Value error, ")
                    )
        sections[kind] = built
    sections["extensions"] = _extensions(doc.get("extensions"), source, problems)
    service = None
    try:
        service = ServiceConfig.model_validate(doc.get("service") or {})
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"{source}: service.{where}: {err['msg'].removeprefix('Value error, ')}")
    if service is not None:
        for name, pipe in service.pipelines.items():
            for kind, ids in (
                ("receivers", pipe.receivers),
                ("processors", pipe.processors),
                ("exporters", pipe.exporters),
            ):
                for cid in ids:
                    if cid not in (doc.get(kind) or {}):
                        problems.append(
                            f"{source}: service.pipelines.{name}.{kind}: {cid!r} is not defined under {kind}"
                        )
            batches = [p for p in pipe.processors if type_of(p) == "batch"]
            if len(batches) > 1:
                problems.append(f"{source}: service.pipelines.{name}: at most one batch processor")
        problems.extend(_check_extensions(doc, service, sections["extensions"], source))
    if problems:
        raise ConfigFileError(problems)
    assert service is not None
    return AgentConfig(service=service, **sections)


def _extensions(raw: Any, source: str, problems: list[str]) -> dict[str, Any]:
    """The ``extensions`` section's settings, each checked by its type's model."""
    if not isinstance(raw, dict):
        if raw is not None:
            problems.append(f"{source}: extensions must be a mapping of extension ids to settings")
        return {}
    built: dict[str, Any] = {}
    for cid, settings in raw.items():
        model = EXTENSIONS.get(type_of(str(cid)))
        if model is None:
            problems.append(f"{source}: extensions.{cid}: unknown type {type_of(str(cid))!r}; known: balances")
            continue
        try:
            built[str(cid)] = model.model_validate(secret_files(model, settings, f"{source}: extensions.{cid}"))
        except SecretFileError as exc:
            problems.append(str(exc))
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"])
                message = str(err["msg"]).removeprefix("Value error, ")
                problems.append(f"{source}: extensions.{cid}{'.' + where if where else ''}: {message}")
    return built


def secret_files(model: type[BaseModel], settings: Any, where: str) -> Any:
    """``settings`` with each ``<name>_file: PATH`` of a secret field ``<name>`` replaced by
    ``<name>:`` the file's content. Raises :class:`SecretFileError` naming the setting: the
    file cannot be read or others may read it, or both ``<name>`` and ``<name>_file`` are given."""
    if not isinstance(settings, dict):
        return settings
    out = dict(settings)
    for key, path in settings.items():
        name = str(key).removesuffix("_file")
        field = model.model_fields.get(name)
        if name == key or key in model.model_fields or field is None:
            continue
        if not _secret(field.annotation) and name not in _SECRET_URLS:
            continue
        if out.get(name) is not None:
            raise SecretFileError(f"{where}: give {name} or {key}, not both")
        del out[key]
        if path is not None:  # `${VAR}` of an unset optional setting
            out[name] = read_secret_file(str(path), f"{where}.{key}")
    return out


def _secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def _check_extensions(doc: dict[str, Any], service: ServiceConfig, built: dict[str, Any], source: str) -> list[str]:
    """``service.extensions`` names defined extensions, at most one balance keeper, and a
    keeper without ``path`` has a spool receiver's directory to write into."""
    problems = [
        f"{source}: service.extensions: {cid!r} is not defined under extensions"
        for cid in service.extensions
        if cid not in (doc.get("extensions") or {})
    ]
    keepers = [cid for cid in service.extensions if type_of(cid) == "balances"]
    if len(keepers) > 1:
        problems.append(f"{source}: service.extensions: at most one balances extension (one snapshot per spool)")
    cfg = built.get(keepers[0]) if keepers else None
    spools = [r for pipe in service.pipelines.values() for r in pipe.receivers if type_of(r) == "spool"]
    if isinstance(cfg, BalancesConfig) and cfg.path is None and not spools:
        problems.append(
            f"{source}: extensions.{keepers[0]}.path: required when the pipeline has no spool receiver"
            " (the snapshot goes to <spool directory>/balances.json by default)"
        )
    return problems


def load_config(path: str | Path) -> AgentConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError([f"{p}: cannot read: {exc.strerror}"]) from None
    try:
        # The catalog's loader: no anchors or aliases (no alias bombs), no repeated keys.
        doc, problems = load_yaml(text, str(p))
    except CatalogError as exc:
        raise ConfigFileError([f"{problem}  [{problem.reason}]" for problem in exc.problems]) from None
    if problems:
        raise ConfigFileError([f"{problem}  [{problem.reason}]" for problem in problems])
    doc = _without_lines(doc)
    return parse_config(substitute_env(doc, str(p)), str(p))


def _without_lines(value: Any) -> Any:
    """The document without the line numbers the loader records in every mapping."""
    if isinstance(value, dict):
        return {k: _without_lines(v) for k, v in value.items() if k != LINE_KEY}
    if isinstance(value, list):
        return [_without_lines(v) for v in value]
    return value


def simple_config(
    *,
    spool_dir: Path | None = None,
    catalog: Path | None = None,
    to: str | None = None,
    org: str = "default",
    token: str | None = None,
    state_dir: Path | None = None,
    ledger_db: str | None = None,
    balances: bool = False,
) -> AgentConfig:
    """The configuration for ``meterkit agent run`` without a file: spool in, one backend out.

    ``to`` is an m3ter-compatible ingest base URL (a ledger's, or m3ter's); without it the
    agent writes straight into the embedded SQLite ledger. ``balances``: keep the balance
    snapshot fresh from the ledger at ``to``.
    """
    doc: dict[str, Any] = {
        "receivers": {"spool": {"directory": str(spool_dir)} if spool_dir else {}},
        "processors": {"validate": {"catalog": str(catalog) if catalog else None}, "batch": {}},
        "exporters": {},
        "service": {
            "pipelines": {"usage": {"receivers": ["spool"], "processors": ["validate", "batch"], "exporters": []}}
        },
    }
    if catalog:
        doc["processors"]["derive"] = {"catalog": str(catalog)}
        doc["service"]["pipelines"]["usage"]["processors"] = ["validate", "derive", "batch"]
    if to:
        doc["exporters"]["m3ter"] = {"base_url": to, "org_id": org, "token": token or NO_TOKEN}
        doc["service"]["pipelines"]["usage"]["exporters"] = ["m3ter"]
    else:
        doc["exporters"]["ledger"] = {"org_id": org, **({"db": ledger_db} if ledger_db else {})}
        doc["service"]["pipelines"]["usage"]["exporters"] = ["ledger"]
    if balances:
        if not to:
            raise ConfigFileError(["command line: --balances needs --to, the URL of a ledger serving balances"])
        doc["extensions"] = {"balances": {"ledger_url": to, "org_id": org, "token": token}}
        doc["service"]["extensions"] = ["balances"]
    if state_dir:
        doc["service"]["state_dir"] = str(state_dir)
    return parse_config(doc, "command line")
