"""``meterkit meters push | diff | pull`` against a ledger process serving m3ter's Meter API,
read back with the official m3ter client."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

import meterkit
from meterkit_agent.cli import app
from meterkit_agent.cli.metersync import bodies

from ..conftest import TOKEN, LedgerServer, start_ledger

CATALOG = """
custom_fields:
  price_per_gb: 0.05
meters:
  - code: api_calls
    name: API calls
    data_fields:
      - {code: user, name: User, category: WHO, privacy: pseudonymize}
      - {code: calls, name: Calls, category: MEASURE, unit: "{API_calls}"}
  - code: storage
    name: Storage
    product: files
    data_fields:
      - {code: bytes, name: Bytes, category: MEASURE, unit: By}
    derived_fields:
      - {code: gib, name: GiB, category: MEASURE, unit: GiBy, calculation: "bytes / 1073741824"}
      - {code: price, name: Price, category: COST, calculation: "bytes / 1073741824 * price_per_gb"}
    custom_fields:
      tier: gold
"""


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerServer]:
    server = start_ledger(tmp_path_factory.mktemp("ledger"))
    yield server
    server.proc.kill(signal.SIGTERM)


def meters(ledger: LedgerServer, org: str, *args: str) -> Result:
    """The command run in this process (the ledger is the real process): a subprocess
    would spend most of a second importing the command line for each call."""
    runner = CliRunner()
    env = {"METERKIT_LEDGER_TOKEN": TOKEN, "M3TER_TOKEN": None, "M3TER_BASE_URL": None, "M3TER_ORG_ID": None}
    return runner.invoke(app, ["meters", *args, "--url", ledger.url, "--org", org], env=env)


def client(ledger: LedgerServer, org: str) -> Any:
    import m3ter

    return m3ter.M3ter(base_url=ledger.url, token=TOKEN, org_id=org, api_key="unused", api_secret="unused")


def write(tmp_path: Path, text: str = CATALOG) -> Path:
    path = tmp_path / "meters.yaml"
    path.write_text(text)
    return path


def test_push_is_idempotent_and_readable_by_the_m3ter_client(ledger: LedgerServer, tmp_path: Path) -> None:
    file = write(tmp_path)
    first = meters(ledger, "org-push", "push", str(file))
    assert first.exit_code == 0, first.stderr
    assert "+ create     api_calls" in first.stdout and "+ create     storage" in first.stdout
    assert "pushed: 2 created, 0 changed, 0 deleted" in first.stdout

    again = meters(ledger, "org-push", "push", str(file))
    assert again.exit_code == 0, again.stderr
    assert "pushed: 0 created, 0 changed, 0 deleted" in again.stdout
    assert "= unchanged  storage" in again.stdout

    same = meters(ledger, "org-push", "diff", str(file))
    assert same.exit_code == 0, same.stdout + same.stderr
    assert "0 to create, 0 to change, 2 unchanged, 0 only remote" in same.stdout

    m3 = client(ledger, "org-push")
    listed = {m.code: m for m in m3.meters.list()}
    assert sorted(listed) == ["api_calls", "storage"]
    storage = m3.meters.retrieve(listed["storage"].id)
    assert storage.name == "Storage" and storage.product_id == "files" and storage.version == 1
    assert [(f.code, f.category, f.unit) for f in storage.data_fields or []] == [("bytes", "MEASURE", "By")]
    assert [(f.code, f.calculation) for f in storage.derived_fields or []] == [
        ("gib", "bytes / 1073741824"),
        ("price", "bytes / 1073741824 * price_per_gb"),
    ]
    assert storage.custom_fields == {"tier": "gold"}  # the meter's own; the organisation's are not a meter's
    calls = m3.meters.retrieve(listed["api_calls"].id)
    assert [(f.code, f.unit) for f in calls.data_fields or []] == [("user", None), ("calls", "{API_calls}")]


def test_diff_names_a_changed_field_and_dry_run_changes_nothing(ledger: LedgerServer, tmp_path: Path) -> None:
    assert meters(ledger, "org-diff", "push", str(write(tmp_path))).exit_code == 0
    changed = write(tmp_path, CATALOG.replace("unit: By}", "unit: KiBy}").replace("name: API calls", "name: Calls"))

    diff = meters(ledger, "org-diff", "diff", str(changed))
    assert diff.exit_code == 1
    assert "~ change     storage" in diff.stdout
    assert "dataFields.bytes.unit: 'By' -> 'KiBy'" in diff.stdout
    assert "name: 'API calls' -> 'Calls'" in diff.stdout

    dry = meters(ledger, "org-diff", "push", str(changed), "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert "dataFields.bytes.unit: 'By' -> 'KiBy'" in dry.stdout and "dry run: nothing changed" in dry.stdout
    m3 = client(ledger, "org-diff")
    stored = {m.code: m for m in m3.meters.list()}
    assert stored["storage"].data_fields[0].unit == "By" and stored["storage"].version == 1

    pushed = meters(ledger, "org-diff", "push", str(changed))
    assert "pushed: 0 created, 2 changed, 0 deleted" in pushed.stdout, pushed.stdout + pushed.stderr
    storage = m3.meters.retrieve(stored["storage"].id)
    assert storage.data_fields[0].unit == "KiBy" and storage.version == 2
    assert meters(ledger, "org-diff", "diff", str(changed)).exit_code == 0


def test_only_remote_meters_are_deleted_only_with_prune(ledger: LedgerServer, tmp_path: Path) -> None:
    m3 = client(ledger, "org-prune")
    m3.meters.create(
        code="legacy",
        name="Legacy",
        data_fields=[{"category": "MEASURE", "code": "n", "name": "N"}],
        derived_fields=[],
    )
    kept = meters(ledger, "org-prune", "push", str(write(tmp_path)))
    assert kept.exit_code == 0, kept.stderr
    assert "- keep (only remote; --prune deletes it) legacy" in kept.stdout
    assert "legacy" in {m.code for m in m3.meters.list()}

    pruned = meters(ledger, "org-prune", "push", str(write(tmp_path)), "--prune")
    assert "pushed: 0 created, 0 changed, 1 deleted" in pruned.stdout, pruned.stdout + pruned.stderr
    assert {m.code for m in m3.meters.list()} == {"api_calls", "storage"}


def test_pull_round_trips_and_keeps_what_only_meterkit_reads(ledger: LedgerServer, tmp_path: Path) -> None:
    file = write(tmp_path)
    assert meters(ledger, "org-pull", "push", str(file)).exit_code == 0
    out = tmp_path / "pulled.yaml"
    out.write_text(CATALOG)  # a file with privacy settings and organisation custom fields
    pulled = meters(ledger, "org-pull", "pull", "--out", str(out))
    assert pulled.exit_code == 0, pulled.stderr
    assert meterkit.load_catalog(out).meters == meterkit.load_catalog(file).meters
    fresh = tmp_path / "fresh.yaml"  # no organisation custom_fields to carry over: price cannot be read
    refused = meters(ledger, "org-pull", "pull", "--out", str(fresh))
    assert refused.exit_code == 1 and "price_per_gb" in refused.stderr and not fresh.exists()

    plain = write(tmp_path, CATALOG.replace("      - {code: price, name: Price, category: COST,", "#"))
    assert meters(ledger, "org-pull", "push", str(plain), "--prune").exit_code == 0
    assert meters(ledger, "org-pull", "pull", "--out", str(fresh)).exit_code == 0
    doc = yaml.safe_load(fresh.read_text())
    assert [m["code"] for m in doc["meters"]] == ["api_calls", "storage"]
    assert doc["meters"][1]["custom_fields"] == {"tier": "gold"}
    assert bodies(fresh) == bodies(plain)  # the organisation's custom_fields are not a meter's
    assert meters(ledger, "org-pull", "diff", str(fresh)).exit_code == 0


def test_ledger_refuses_a_bad_meter_and_a_stale_version(ledger: LedgerServer) -> None:
    import m3ter

    m3 = client(ledger, "org-bad")
    with pytest.raises(m3ter.BadRequestError) as caught:
        m3.meters.create(
            code="bad",
            name="Bad",
            data_fields=[{"category": "MEASURE", "code": "1x", "name": "X"}],
            derived_fields=[{"category": "MEASURE", "code": "y", "name": "Y", "calculation": "(("}],
        )
    assert "1x" in str(caught.value) and "y" in str(caught.value)
    fields = [{"category": "MEASURE", "code": "n", "name": "N"}]
    made = m3.meters.create(code="ok", name="Ok", data_fields=fields, derived_fields=[])
    with pytest.raises(m3ter.ConflictError):
        m3.meters.create(code="ok", name="Again", data_fields=fields, derived_fields=[])
    m3.meters.update(made.id, code="ok", name="Ok 2", data_fields=fields, derived_fields=[], version=1)
    with pytest.raises(m3ter.ConflictError):
        m3.meters.update(made.id, code="ok", name="Ok 3", data_fields=fields, derived_fields=[], version=1)
    assert m3.meters.delete(made.id).name == "Ok 2"
    with pytest.raises(m3ter.NotFoundError):
        m3.meters.retrieve(made.id)
