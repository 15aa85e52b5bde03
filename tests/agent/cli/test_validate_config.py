"""``meterkit agent validate-config`` checks what parsing cannot: the catalogs a
configuration names load, and its URLs and listening addresses could be used. Each problem
names the file, the key path and the reason; a bad configuration exits 2."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from meterkit_agent.cli import app
from tests.conftest import CATALOG

RUNNER = CliRunner()
BROKEN_CATALOG = (
    "meters:\n  - code: a\n    name: A\n    data_fields:\n      - {code: n, name: N, category: MEASURE, unit: GB}\n"
)


def config(tmp_path: Path, *, catalog: str, exporters: str, endpoint: str = "127.0.0.1:4319") -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"receivers:\n  spool: {{directory: {tmp_path / 'spool'}}}\n  http: {{endpoint: '{endpoint}'}}\n"
        f"processors:\n  validate: {{catalog: {catalog}}}\n  derive: {{catalog: {catalog}}}\n  batch: {{}}\n"
        f"exporters:\n{exporters}"
        f"service:\n  state_dir: {tmp_path / 'state'}\n  pipelines:\n    usage:\n"
        "      receivers: [spool, http]\n      processors: [validate, derive, batch]\n"
        "      exporters: [m3ter]\n"
    )
    return path


GOOD_EXPORTER = "  m3ter: {base_url: 'http://127.0.0.1:8765', org_id: o, token: t}\n"


def validate(path: Path) -> tuple[int, str]:
    done = RUNNER.invoke(app, ["agent", "validate-config", str(path)])
    assert "Traceback" not in done.output
    return done.exit_code, done.output


def test_a_good_configuration_is_ok(tmp_path: Path) -> None:
    code, out = validate(config(tmp_path, catalog=str(CATALOG), exporters=GOOD_EXPORTER))
    assert code == 0 and "ok; pipeline spool, http -> validate, derive, batch -> m3ter" in out


def test_a_missing_or_broken_catalog_is_named_with_its_file_and_reason(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    code, out = validate(config(tmp_path, catalog=str(missing), exporters=GOOD_EXPORTER))
    assert code == 2
    assert f"processors.validate.catalog: {missing}: cannot read the catalog" in out and "[unreadable]" in out
    assert out.count("cannot read the catalog") == 2  # validate and derive both name it; read once, told twice
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN_CATALOG)
    code, out = validate(config(tmp_path, catalog=str(broken), exporters=GOOD_EXPORTER))
    assert code == 2 and f"processors.derive.catalog: {broken}:5, meter 'a', field 'n'" in out and "[invalid]" in out


def test_bad_urls_and_endpoints_are_named_by_key_path(tmp_path: Path) -> None:
    exporters = (
        "  m3ter: {base_url: 'not a url', org_id: o, token: t}\n"
        "  http: {url: 'http://user:hunter2@:80/x'}\n"
        "  http/two: {url: 'https://127.0.0.1:70000/x'}\n"
        "  http/three: {url: 'ftp://127.0.0.1/x'}\n"
    )
    path = config(tmp_path, catalog=str(CATALOG), exporters=exporters, endpoint="127.0.0.1:99999")
    code, out = validate(path)
    assert code == 2
    assert f"{path}: exporters.m3ter.base_url: 'not a url' is not an http(s) URL" in out
    assert "exporters.http.url: 'http://user:***@:80/x' names no host" in out and "hunter2" not in out
    assert "exporters.http/two.url: 'https://127.0.0.1:70000/x': the port is not a number from 1 to 65535" in out
    assert "exporters.http/three.url: 'ftp://127.0.0.1/x' is not an http(s) URL" in out
    assert "receivers.http.endpoint: '127.0.0.1:99999': the port is not a number from 1 to 65535" in out
    assert "5 problem(s)" in out
