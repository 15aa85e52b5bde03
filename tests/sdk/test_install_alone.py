"""`pip install meterkit` is the SDK alone (DESIGN.md §10): the application process needs,
imports and installs none of the agent's, the ledger's or the command line's packages.

Proved three ways: an app run in a fresh interpreter in which those packages cannot be
imported; the dependency lists in pyproject.toml, followed through every transitive
requirement; and the metadata of a wheel built from this tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # the SDK supports 3.10, whose standard library has no TOML reader
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "sdk_alone_app.py"

#: Distributions only the agent, the ledger and the command line need.
AGENT_ONLY = {
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "psycopg",
    "typer",
    "requests",
    "tenacity",
    "tqdm",
    "prometheus-client",
    "protobuf",
    "opentelemetry-proto",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-exporter-prometheus",
}

CATALOG = """\
meters:
  - code: api_calls
    name: API calls
    data_fields:
      - {code: calls, name: Calls, category: MEASURE, unit: "{API_calls}"}
      - {code: seconds, name: Handler time, category: MEASURE, unit: s}
      - {code: endpoint, name: Endpoint, category: WHAT}
      - {code: status, name: Outcome, category: OTHER}
  - code: downloads
    name: Downloads
    data_fields:
      - {code: bytes, name: Bytes, category: MEASURE, unit: By}
      - {code: user, name: User, category: WHO}
      - {code: region, name: Region, category: WHERE}
    derived_fields:
      - {code: mib, name: MiB, category: MEASURE, unit: MiBy, calculation: "Math.round(bytes / 1048576, 3)"}
span_rules:
  - meter: api_calls
    match: {kind: SERVER}
    account: {attribute: app.account}
    fields: {what.endpoint: http.route}
    measure: {calls: 1}
    duration: seconds
    errors: other.status
"""


def closure(requirements: list[str]) -> set[str]:
    """Every distribution pip installs for these requirements, as this environment's metadata says."""
    found: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in found:
            continue
        found.add(name)
        extras = {"", *req.extras}  # a dependency's extras are installed only when asked for
        for sub in map(Requirement, metadata.requires(req.name) or []):
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return found


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]  # type: ignore[no-any-return]


def without_timing(m: dict[str, Any]) -> dict[str, Any]:
    """A measurement minus what differs from run to run (uid, ts, elapsed seconds)."""
    out = {k: v for k, v in m.items() if k not in ("uid", "ts")}
    if "seconds" in out.get("measure", {}):
        seconds = out["measure"]["seconds"]
        assert isinstance(seconds, float) and 0 <= seconds < 60
        out["measure"] = {**out["measure"], "seconds": "<elapsed>"}
    return out


def test_an_app_records_through_the_public_api_with_no_agent_package_importable(tmp_path: Path) -> None:
    catalog = tmp_path / "meters.yaml"
    catalog.write_text(CATALOG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METERKIT_", "PYTHON", "OTEL_"))}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    # -I: no PYTHON* variables, no user site, no current directory on the path; the
    # environment's site-packages (where meterkit is installed) is all the app sees.
    run = subprocess.run(
        [sys.executable, "-I", str(APP), str(catalog), str(tmp_path / "spool")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)

    assert report["refused_attempts"] == []
    assert report["agent_modules_loaded"] == []
    assert report["background_errors"] == []
    loaded = {canonicalize_name(d) for d in report["distributions_loaded"]}
    assert loaded, "the app loaded no installed distribution at all: the file-to-owner map is broken"
    assert loaded <= closure(pyproject()["dependencies"]), "loaded, but not installed by `pip install meterkit`"
    assert {"orjson", "lark", "pydantic", "pyyaml", "opentelemetry-sdk"} <= loaded  # the map does find them

    assert report["returned"] == "ok"
    assert report["propagated"] == "KeyError('boom')"
    assert report["strict"] == ["wrong_type", "downloads", "measure.bytes"]
    assert [without_timing(m) for m in report["captured"]] == [
        {
            "meter": "downloads",
            "account": "acme",
            "who": {"user": "u1"},
            "where": {"region": "eu"},
            "measure": {"bytes": 2048},
        },
        {
            "meter": "downloads",
            "account": "acme",
            "who": {"user": "u2"},
            "where": {"region": "eu"},
            "measure": {"bytes": 4096},
        },
        {
            "meter": "api_calls",
            "account": "globex",
            "what": {"endpoint": "/report"},
            "other": {"status": "ok"},
            "measure": {"calls": 1, "seconds": "<elapsed>"},
        },
        {
            "meter": "api_calls",
            "account": "globex",
            "what": {"endpoint": "/fail"},
            "other": {"status": "error"},
            "measure": {"calls": 1, "seconds": "<elapsed>"},
        },
        {"meter": "downloads", "account": "acme", "measure": {"bytes": 7}},
        {
            "meter": "api_calls",
            "account": "initech",
            "what": {"endpoint": "/files"},
            "other": {"status": "error"},
            "measure": {"calls": 1, "seconds": "<elapsed>"},
        },
    ]

    assert report["flushed"] is True and report["shut_down"] is True and report["lost"] == {}
    assert [without_timing(m) for m in report["spooled"]] == [
        {"meter": "downloads", "account": "acme", "who": {"user": "u3"}, "measure": {"bytes": 1}}
    ]


def test_pyproject_puts_the_agent_packages_in_the_agent_extra_only() -> None:
    project = pyproject()
    core = project["dependencies"]
    extras = project["optional-dependencies"]
    assert names(core) & AGENT_ONLY == set()
    # nor does anything the SDK depends on bring one of them along
    assert closure(core) & AGENT_ONLY == set()
    assert names(extras["agent"]) >= AGENT_ONLY
    assert "meterkit[agent]" in extras["dev"]  # so `pip install -e '.[dev,bench]'` tests the agent too
    assert project["scripts"] == {"meterkit": "meterkit_agent:main"}


def test_a_wheel_built_from_this_tree_requires_the_agent_packages_only_with_the_extra(tmp_path: Path) -> None:
    # pip fetches the build backend (hatchling) into an isolated environment: from its cache
    # when it has one, else from the index. Offline without a cache the build cannot run;
    # the test above then still checks the same facts in pyproject.toml.
    env = {**os.environ, "PIP_RETRIES": "0", "PIP_TIMEOUT": "10", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    if build.returncode != 0:
        pytest.skip("cannot build a wheel here (no network and no cached hatchling?):\n" + build.stderr[-2000:])
    [wheel] = tmp_path.glob("meterkit-*.whl")
    with zipfile.ZipFile(wheel) as z:
        [meta] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        text = z.read(meta).decode()
        [entry_points] = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert "meterkit = meterkit_agent:main" in z.read(entry_points).decode()
    requires = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]

    def needed(extra: str) -> set[str]:
        return {
            canonicalize_name(r.name)
            for r in map(Requirement, requires)
            if r.marker is None or r.marker.evaluate({"extra": extra})
        }

    assert "Provides-Extra: agent" in text.splitlines()
    assert needed("") & AGENT_ONLY == set(), textwrap.indent(text[:3000], "    ")
    assert {"orjson", "lark", "ucumvert", "pydantic", "pyyaml", "opentelemetry-api"} <= needed("")
    assert needed("agent") >= AGENT_ONLY
    assert needed("dev") >= AGENT_ONLY  # hatchling writes dev's `meterkit[agent]` out in full


def test_the_command_without_the_agent_extra_says_what_to_install(tmp_path: Path) -> None:
    """The wheel carries ``meterkit_agent`` to every install; without the extra, the
    ``meterkit`` command names the missing extra instead of a traceback."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class _Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('typer', 'fastapi', 'uvicorn', 'sqlalchemy'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Absent())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import meterkit_agent; meterkit_agent.main()", "meters", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode == 1
    assert "pip install 'meterkit[agent]'" in result.stderr and "Traceback" not in result.stderr
