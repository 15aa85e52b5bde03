"""The `meterkit` command, run as a user runs it: a real process, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import meterkit
from meterkit._spool import FRAME_HEADER_SIZE, read_segment, segments
from tests.conftest import CATALOG


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterkit_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_meters_validate_ok() -> None:
    done = cli("meters", "validate", str(CATALOG))
    assert done.returncode == 0
    assert "ok, 4 meter(s), 1 derived field(s)" in done.stdout


def test_meters_validate_prints_every_problem_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "meters.yaml"
    bad.write_text(
        "meters:\n"
        "  - code: a\n    name: A\n    data_fields:\n      - {code: n, name: N, category: MEASURE, unit: GB}\n"
        "  - code: b\n    name: B\n    derived_fields:\n"
        "      - {code: d, name: D, category: MEASURE, calculation: 'x +'}\n"
    )
    done = cli("meters", "validate", str(bad))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"{bad}:5, meter 'a', field 'n'" in done.stderr
    assert f"{bad}:9, meter 'b', field 'd'" in done.stderr
    assert "2 problem(s)" in done.stderr


def test_meters_validate_missing_file(tmp_path: Path) -> None:
    done = cli("meters", "validate", str(tmp_path / "nope.yaml"))
    assert done.returncode == 1 and "cannot read the catalog" in done.stderr and "Traceback" not in done.stderr


def make_spool(spool: Path) -> None:
    client = meterkit.Client(spool_dir=spool)
    for i in range(7):
        client.record("api_calls", account="acme" if i < 4 else "globex", measure={"calls": 1})
    client.record("api_calls", account="", measure={"calls": 1})  # rejected
    client.shutdown(5)


def test_spool_inspect_counts_and_reports_losses(spool: Path) -> None:
    make_spool(spool)
    done = cli("spool", "inspect", str(spool))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.split() == ["api_calls", "acme", "4"] for line in lines)
    assert any(line.split() == ["api_calls", "globex", "3"] for line in lines)
    assert "rejected:missing_account" in done.stdout
    assert "1 rejected measurement(s)" in done.stdout


def test_spool_inspect_json_lines(spool: Path) -> None:
    make_spool(spool)
    done = cli("spool", "inspect", "--json", str(spool))
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 7 and all(r["meter"] == "api_calls" for r in records)


def test_spool_inspect_reports_corrupt_frames(spool: Path) -> None:
    make_spool(spool)
    [segment] = segments(spool)
    frame = read_segment(segment).frames[2]
    data = bytearray(segment.read_bytes())
    data[frame.offset + FRAME_HEADER_SIZE] ^= 0xFF
    segment.write_bytes(bytes(data))
    done = cli("spool", "inspect", str(spool))
    assert done.returncode == 1
    assert "corrupt frame" in done.stdout and f"at byte {frame.offset}" in done.stdout
    assert "Traceback" not in done.stderr


def test_backfill_csv_with_progress_and_line_numbers(tmp_path: Path) -> None:
    source = tmp_path / "history.csv"
    source.write_text(
        "account,ts,event,bytes,user,where.region\n"
        "acme,2025-02-01T00:00:00Z,e1,100,u1,eu\n"
        "acme,2025-02-01T01:00:00Z,e2,lots,u1,eu\n"
        "globex,2025-02-02T00:00:00Z,e3,300,u2,us\n"
    )
    spool = tmp_path / "spool"
    args = [
        "backfill",
        str(source),
        "--meter",
        "data_downloaded",
        "--catalog",
        str(CATALOG),
        "--spool-dir",
        str(spool),
        "--key",
        "event",
    ]
    first = cli(*args)
    assert first.returncode == 1  # one bad row
    assert f"{source}:3:" in first.stderr and "wrong_type" in first.stderr
    assert "2 measurement(s) spooled, 1 rejected" in first.stdout
    second = cli(*args)
    assert second.returncode == 1
    inspect = cli("spool", "inspect", "--json", str(spool))
    uids = [json.loads(line)["uid"] for line in inspect.stdout.splitlines()]
    assert len(uids) == 4 and len(set(uids)) == 2  # the re-run repeats the same uids: no double count
    records = [json.loads(line) for line in inspect.stdout.splitlines()]
    assert records[0]["who"] == {"user": "u1"} and records[0]["where"] == {"region": "eu"}


def test_backfill_jsonl_reports_bad_json(tmp_path: Path) -> None:
    source = tmp_path / "history.jsonl"
    source.write_text('{"account": "a", "ts": "2025-01-01T00:00:00Z", "measure": {"n": 1}}\n{oops\n')
    done = cli("backfill", str(source), "--meter", "m", "--spool-dir", str(tmp_path / "s"))
    assert done.returncode == 1 and f"{source}:2:" in done.stderr
    assert "1 measurement(s) spooled, 1 rejected" in done.stdout


def test_reconcile_reads_periods_as_the_ledger_does(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    refused = cli("reconcile", "--from", "yesterday", "--db", db, "--state-dir", str(tmp_path))
    assert refused.returncode == 2 and "--from: 'yesterday' is not an ISO 8601 date-time" in refused.stderr
    # A date alone and an offset both read as instants: the run gets past the period to the journal.
    later = cli(
        "reconcile",
        "--from",
        "2026-11-01",
        "--to",
        "2026-11-02T00:00:00+01:00",
        "--db",
        db,
        "--state-dir",
        str(tmp_path / "none"),
    )
    assert later.returncode == 2 and "journal" in later.stderr and "--from" not in later.stderr


def test_agent_run_refuses_a_config_whose_catalog_or_url_cannot_work(tmp_path: Path) -> None:
    """What validate-config finds, agent run refuses before it starts anything (exit 2)."""
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"receivers: {{spool: {{directory: {tmp_path / 'spool'}}}}}\n"
        f"processors: {{validate: {{catalog: {tmp_path / 'missing.yaml'}}}}}\n"
        "exporters: {m3ter: {base_url: 'not a url', org_id: o, token: t}}\n"
        f"service: {{state_dir: {tmp_path / 'state'}, pipelines: {{u: {{receivers: [spool],"
        " processors: [validate], exporters: [m3ter]}}}\n"
    )
    out = cli("agent", "run", "--config", str(config))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "processors.validate.catalog" in out.stderr and "cannot read the catalog" in out.stderr
    assert "exporters.m3ter.base_url: 'not a url' is not an http(s) URL" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "state").exists()  # nothing was started
