"""An application process that uses the SDK with none of the agent's packages importable.

Run by ``test_install_alone.py`` as ``python -I sdk_alone_app.py CATALOG SPOOL_DIR``. Before
meterkit is imported, an import hook refuses the agent, the ledger, the command line and
every package that only they need, as if ``pip install meterkit`` (no extras) had been run;
then the app records through every public entry point and prints one JSON report: what
was measured, what was spooled, which refused imports were attempted, which distributions
the process loaded.
"""

from __future__ import annotations

import sys
import traceback

# Import names of what `meterkit[agent]` adds; an import of any of them, or below them, fails.
REFUSED = (
    "meterkit_agent",
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "psycopg",
    "psycopg_binary",
    "typer",
    "requests",
    "tenacity",
    "tqdm",
    "prometheus_client",
    "google.protobuf",
    "opentelemetry.proto",
    "opentelemetry.exporter",
)


class RefuseAgentPackages:
    """A meta path finder that makes the agent's packages look uninstalled, and says who asked."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if any(name == r or name.startswith(r + ".") for r in REFUSED):
            callers = traceback.extract_stack()[:-1]  # without this frame
            caller = next((f"{f.filename}:{f.lineno}" for f in reversed(callers) if "importlib" not in f.filename), "?")
            self.attempts.append(f"{name} (from {caller})")
            raise ModuleNotFoundError(f"No module named {name!r} (refused: not in `pip install meterkit`)", name=name)


refuse = RefuseAgentPackages()
sys.meta_path.insert(0, refuse)
at_start = set(sys.modules)

import asyncio
import json
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

import meterkit
from meterkit import _guard
from meterkit._frames import batch_records
from meterkit._spool import KIND_BATCH, KIND_MEASUREMENT, iter_records
from meterkit.otel import UsageSpanProcessor
from meterkit.testing import capture_measurements

_guard.RAISE_BACKGROUND_ERRORS = True  # as tests/conftest.py does: a swallowed error is reported


def main(catalog: Path, spool: Path) -> dict[str, object]:
    report: dict[str, object] = {}

    @meterkit.meter("api_calls", measure={"calls": 1}, duration="seconds", outcome="status")
    def handler(endpoint: str, fail: bool = False) -> str:
        meterkit.active_meter().set(what={"endpoint": endpoint})  # type: ignore[union-attr]
        if fail:
            raise KeyError("boom")
        return "ok"

    @meterkit.meter("downloads", account="acme")
    async def download(n: int) -> None:
        await asyncio.sleep(0)
        meterkit.active_meter().measure["bytes"] = n  # type: ignore[union-attr]

    provider = TracerProvider()
    tracer = provider.get_tracer("app")
    with capture_measurements(catalog) as captured:
        provider.add_span_processor(UsageSpanProcessor.from_file(catalog))
        with meterkit.context(account="acme", where={"region": "eu"}):
            meterkit.record("downloads", measure={"bytes": 2048}, who={"user": "u1"})
            with meterkit.meter("downloads", who={"user": "u2"}) as block:
                block.measure["bytes"] = 4096
        with meterkit.context(account="globex"):
            report["returned"] = handler("/report")
            try:
                handler("/fail", fail=True)
            except KeyError as exc:
                report["propagated"] = repr(exc)
        asyncio.run(download(7))
        with tracer.start_as_current_span(
            "GET /files", kind=SpanKind.SERVER, attributes={"http.route": "/files", "app.account": "initech"}
        ) as span:
            span.set_status(Status(StatusCode.ERROR))
        try:  # strict mode: a wrong measurement fails at the line that recorded it
            meterkit.record("downloads", account="acme", measure={"bytes": "lots"})
        except meterkit.MeasurementError as exc:
            report["strict"] = [exc.reason, exc.meter, exc.field]
    report["captured"] = captured.measurements

    # The production path: a real spool on disk, read back with the spool reader.
    meterkit.configure(catalog=catalog, spool_dir=spool)
    with meterkit.context(account="acme"):
        meterkit.record("downloads", measure={"bytes": 1}, who={"user": "u3"})
    report["flushed"] = meterkit.flush(10)
    report["lost"] = meterkit.stats()["lost"]
    report["shut_down"] = meterkit.shutdown(10)
    report["spooled"] = [
        m
        for _, f in iter_records(spool)
        for m in (
            [f.json()] if f.kind == KIND_MEASUREMENT else batch_records(f.payload) if f.kind == KIND_BATCH else []
        )
    ]

    report["background_errors"] = [repr(e) for e in _guard.captured]
    report["refused_attempts"] = refuse.attempts
    loaded = set(sys.modules) - at_start
    report["agent_modules_loaded"] = sorted(m for m in loaded if any(m == r or m.startswith(r + ".") for r in REFUSED))
    report["distributions_loaded"] = distributions_of(loaded)
    return report


def distributions_of(modules: set[str]) -> list[str]:
    """The installed distributions that own the files of these modules (site-packages only)."""
    import importlib.metadata
    import os
    import site

    owner: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        for line in (dist.read_text("RECORD") or "").splitlines():
            owner[line.rsplit(",", 2)[0]] = dist.metadata["Name"]
    roots = [os.path.abspath(p) + os.sep for p in site.getsitepackages()]
    found = set()
    for name in modules:
        file = getattr(sys.modules.get(name), "__file__", None)
        if not file:
            continue
        file = os.path.abspath(file)
        for root in roots:
            if file.startswith(root):
                found.add(owner.get(file[len(root) :].replace(os.sep, "/"), f"<no distribution owns {file}>"))
    return sorted(found)


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2])), default=str))
