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
      m3ter: {base_url: "https://api.m3ter.com", org_id: "...", token: "${M3TER_TOKEN}"}
    service:
      state_dir: /var/lib/meterkit/agent
      pipelines:
        usage: {receivers: [spool, http], processors: [validate, derive, batch], exporters: [m3ter]}

Components are named ``type`` or ``type/name`` as in the Collector. ``${VAR}`` (or
``${VAR:-default}``) is replaced from the environment before parsing, so secrets stay out
of the file; an unset variable without a default is an error that names it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from meterkit._settings import default_spool_dir

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigFileError(Exception):
    """A configuration that cannot be used. ``problems`` are the lines to print."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def default_state_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "meterkit" / "agent"


def default_ledger_url() -> str:
    return f"sqlite:///{default_state_dir().parent / 'ledger.db'}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpoolReceiverConfig(_Strict):
    directory: Path = Field(default_factory=default_spool_dir)
    poll_interval_millis: int = Field(200, gt=0)


def _host_port(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("endpoint must be host:port, e.g. 127.0.0.1:4319")
    return v


#: A listening address. Every listener defaults to loopback; another host must be asked for.
HostPort = Annotated[str, AfterValidator(_host_port)]


class HttpReceiverConfig(_Strict):
    endpoint: HostPort = "127.0.0.1:4319"
    token: SecretStr | None = None
    max_request_bytes: int = Field(5 * 1024 * 1024, gt=0)


class OtlpReceiverConfig(HttpReceiverConfig):
    endpoint: HostPort = "127.0.0.1:4318"  # OTLP/HTTP's registered port, on loopback


class ValidateConfig(_Strict):
    catalog: Path | None = None


class DeriveConfig(_Strict):
    catalog: Path | None = None


class EnrichConfig(_Strict):
    set: dict[Literal["who", "what", "where", "other", "metadata"], dict[str, str]] = {}


class BatchConfig(_Strict):
    # m3ter's ingest limits: 1,000 measurements and 512,000 bytes per request.
    max_measurements: int = Field(1000, gt=0, le=1000)
    max_bytes: int = Field(500_000, gt=1000, le=512_000)
    timeout_millis: int = Field(1000, gt=0)


class RetryConfig(_Strict):
    initial_interval_millis: int = Field(200, gt=0)
    max_interval_millis: int = Field(30_000, gt=0)
    request_timeout_millis: int = Field(10_000, gt=0)


class M3terExporterConfig(_Strict):
    base_url: str = "https://api.m3ter.com"
    org_id: str
    token: SecretStr | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    retry: RetryConfig = RetryConfig()

    @model_validator(mode="after")
    def _auth(self) -> M3terExporterConfig:
        if self.token is None and (self.client_id is None or self.client_secret is None):
            raise ValueError("give token, or client_id and client_secret (client-credentials)")
        return self


class HttpExporterConfig(_Strict):
    url: str
    headers: dict[str, SecretStr] = {}
    retry: RetryConfig = RetryConfig()


class OpenMeterExporterConfig(_Strict):
    base_url: str = "https://openmeter.cloud"
    token: SecretStr | None = None
    source: str = "meterkit"  # CloudEvents source: with the uid as id, OpenMeter's idempotency key
    types: dict[str, str] = {}  # meter code -> CloudEvents type (default: the meter code)
    retry: RetryConfig = RetryConfig()


class StripeMeterConfig(_Strict):
    event_name: str | None = None  # default: the meter code
    value_field: str  # "measure.calls", or a bare code looked up in the numeric categories
    customer_payload_key: str = "stripe_customer_id"
    value_payload_key: str = "value"


class StripeExporterConfig(_Strict):
    api_key: SecretStr
    base_url: str = "https://api.stripe.com"
    meters: dict[str, StripeMeterConfig]
    customers: dict[str, str] = {}  # account -> Stripe customer id (default: the account is the id)
    # Stripe allows 1,000 meter events a second in live mode (less in test mode); stay under it.
    max_requests_per_second: float = Field(100, gt=0, le=1000)
    retry: RetryConfig = RetryConfig()


class LedgerExporterConfig(_Strict):
    db: str = Field(default_factory=default_ledger_url)
    org_id: str = "default"


class FileExporterConfig(_Strict):
    path: Path


class PipelineConfig(_Strict):
    receivers: Annotated[list[str], Field(min_length=1)]
    processors: list[str] = []
    exporters: Annotated[list[str], Field(min_length=1)]


class OtlpMetricsConfig(_Strict):
    endpoint: str = "http://127.0.0.1:4318/v1/metrics"
    headers: dict[str, SecretStr] = {}
    interval_millis: int = Field(10_000, gt=0)


class PrometheusConfig(_Strict):
    endpoint: HostPort = "127.0.0.1:9464"


class MetricsTelemetryConfig(_Strict):
    otlp: OtlpMetricsConfig | None = None
    prometheus: PrometheusConfig | None = None


class TelemetryConfig(_Strict):
    metrics: MetricsTelemetryConfig = MetricsTelemetryConfig()


class ServiceConfig(_Strict):
    state_dir: Path = Field(default_factory=default_state_dir)
    telemetry: TelemetryConfig = TelemetryConfig()
    drain_timeout_millis: int = Field(10_000, gt=0)
    retain_segments_hours: float = Field(0, ge=0)
    pipelines: dict[str, PipelineConfig]

    @field_validator("pipelines")
    @classmethod
    def _one(cls, v: dict[str, PipelineConfig]) -> dict[str, PipelineConfig]:
        if len(v) != 1:
            raise ValueError("exactly one pipeline is supported: the spool checkpoint follows one delivery path")
        return v


RECEIVERS: dict[str, type[BaseModel]] = {
    "spool": SpoolReceiverConfig,
    "http": HttpReceiverConfig,
    "otlp": OtlpReceiverConfig,
}
PROCESSORS: dict[str, type[BaseModel]] = {
    "validate": ValidateConfig,
    "derive": DeriveConfig,
    "enrich": EnrichConfig,
    "batch": BatchConfig,
}
EXPORTERS: dict[str, type[BaseModel]] = {
    "m3ter": M3terExporterConfig,
    "http": HttpExporterConfig,
    "openmeter": OpenMeterExporterConfig,
    "stripe": StripeExporterConfig,
    "ledger": LedgerExporterConfig,
    "file": FileExporterConfig,
}


class AgentConfig(BaseModel):
    """A validated configuration: component configs keyed by their ``type[/name]`` id."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    receivers: dict[str, Any]
    processors: dict[str, Any]
    exporters: dict[str, Any]
    service: ServiceConfig

    @property
    def pipeline(self) -> PipelineConfig:
        return next(iter(self.service.pipelines.values()))

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


def _type_of(cid: str) -> str:
    return cid.split("/", 1)[0]


def parse_config(doc: Any, source: str = "config") -> AgentConfig:
    """Validate a parsed document; every problem is collected, then raised together."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise ConfigFileError([f"{source}: expected a mapping with receivers, processors, exporters and service"])
    for key in sorted(set(doc) - {"receivers", "processors", "exporters", "service"}):
        problems.append(f"{source}: unknown top-level key {key!r}")
    sections: dict[str, dict[str, Any]] = {}
    for kind, registry in (("receivers", RECEIVERS), ("processors", PROCESSORS), ("exporters", EXPORTERS)):
        built: dict[str, Any] = {}
        raw = doc.get(kind) or {}
        if not isinstance(raw, dict):
            problems.append(f"{source}: {kind} must be a mapping of component ids to settings")
            raw = {}
        for cid, settings in raw.items():
            model = registry.get(_type_of(str(cid)))
            if model is None:
                problems.append(
                    f"{source}: {kind}.{cid}: unknown type {_type_of(str(cid))!r}; known: {', '.join(registry)}"
                )
                continue
            try:
                built[str(cid)] = model.model_validate(settings or {})
            except ValidationError as exc:
                for err in exc.errors():
                    where = ".".join(str(p) for p in err["loc"])
                    problems.append(
                        f"{source}: {kind}.{cid}{'.' + where if where else ''}: "
                        + str(err["msg"]).removeprefix("Value error, ")
                    )
        sections[kind] = built
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
            batches = [p for p in pipe.processors if _type_of(p) == "batch"]
            if len(batches) > 1:
                problems.append(f"{source}: service.pipelines.{name}: at most one batch processor")
    if problems:
        raise ConfigFileError(problems)
    assert service is not None
    return AgentConfig(service=service, **sections)


def load_config(path: str | Path) -> AgentConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError([f"{p}: cannot read: {exc.strerror}"]) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigFileError([f"{p}{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    return parse_config(substitute_env(doc, str(p)), str(p))


def simple_config(
    *,
    spool_dir: Path | None = None,
    catalog: Path | None = None,
    to: str | None = None,
    org: str = "default",
    token: str | None = None,
    state_dir: Path | None = None,
    ledger_db: str | None = None,
) -> AgentConfig:
    """The configuration for ``meterkit agent run`` without a file: spool in, one backend out.

    ``to`` is an m3ter-compatible ingest base URL (a ledger's, or m3ter's); without it the
    agent writes straight into the embedded SQLite ledger.
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
        doc["exporters"]["m3ter"] = {"base_url": to, "org_id": org, "token": token or "none"}
        doc["service"]["pipelines"]["usage"]["exporters"] = ["m3ter"]
    else:
        doc["exporters"]["ledger"] = {"org_id": org, **({"db": ledger_db} if ledger_db else {})}
        doc["service"]["pipelines"]["usage"]["exporters"] = ["ledger"]
    if state_dir:
        doc["service"]["state_dir"] = str(state_dir)
    return parse_config(doc, "command line")
