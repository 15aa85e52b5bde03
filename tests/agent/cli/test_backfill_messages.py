"""``meterkit backfill`` names a mistake that spoils every row once, before any row is
spooled: a meter the catalog does not know, a ``--key`` column the file does not have.
Problems of single rows are still reported per row. Run in process (fast)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from meterkit_agent.cli import app
from meterkit_agent.cli.backfill import KEY_PROBE_ROWS
from tests.conftest import CATALOG
from tests.sdk.helpers import spooled


def invoke(monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    for name in [k for k in os.environ if k.startswith("METERKIT_")]:
        monkeypatch.delenv(name)
    return CliRunner().invoke(app, list(args))


def csv_file(tmp_path: Path, rows: int, header: str = "account,ts,event,bytes") -> Path:
    path = tmp_path / "history.csv"
    lines = [header] + [f"acme,2025-01-01T10:{i % 60:02d}:00Z,e{i},{i + 1}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def jsonl_file(tmp_path: Path, rows: list[dict[str, Any]]) -> Path:
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def download(i: int, **extra: Any) -> dict[str, Any]:
    return {"account": "acme", "ts": f"2025-01-01T10:{i % 60:02d}:00Z", "measure": {"bytes": i + 1}, **extra}


def load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, file: Path, meter: str, *extra: str) -> Any:
    spool = tmp_path / "spool"
    return invoke(
        monkeypatch,
        "backfill",
        str(file),
        "--meter",
        meter,
        "--catalog",
        str(CATALOG),
        "--spool-dir",
        str(spool),
        *extra,
    )


def nothing_spooled(tmp_path: Path) -> bool:
    return spooled(tmp_path / "spool") == []


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_unknown_meter_is_named_once_and_nothing_is_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str
) -> None:
    file = csv_file(tmp_path, 50) if kind == "csv" else jsonl_file(tmp_path, [download(i) for i in range(50)])
    done = load(monkeypatch, tmp_path, file, "data_download")
    assert done.exit_code == 2, done.output
    assert done.output.count("meter 'data_download' is not in the catalog") == 1
    assert "unknown key" not in done.output and "Traceback" not in done.output
    assert nothing_spooled(tmp_path)


def test_csv_key_column_missing_from_the_header_is_named_before_any_row(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    file = csv_file(tmp_path, 30)
    done = load(monkeypatch, tmp_path, file, "data_downloaded", "--key", "event_id")
    assert done.exit_code == 2, done.output
    assert done.output.count("--key column 'event_id' is not in the header (account, ts, event, bytes)") == 1
    assert "missing_key" not in done.output
    assert nothing_spooled(tmp_path)


def test_jsonl_key_missing_from_the_first_rows_is_named_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # more rows than the probe, the key only after it: still a misspelling to stop at
    rows = [download(i, event=f"e{i}") for i in range(KEY_PROBE_ROWS + 5)]
    for row in rows[:KEY_PROBE_ROWS]:
        del row["event"]
    done = load(monkeypatch, tmp_path, jsonl_file(tmp_path, rows), "data_downloaded", "--key", "event")
    assert done.exit_code == 2, done.output
    assert done.output.count(f"none of the first {KEY_PROBE_ROWS} row(s) has the --key field 'event'") == 1
    assert nothing_spooled(tmp_path)


def test_a_key_present_with_some_rows_lacking_it_is_reported_per_row(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rows = [download(i, event=f"e{i}") for i in range(6)]
    del rows[2]["event"], rows[4]["event"]
    done = load(monkeypatch, tmp_path, jsonl_file(tmp_path, rows), "data_downloaded", "--key", "event")
    assert done.exit_code == 1, done.output
    assert done.output.count("[missing_key]") == 2
    assert ":3: " in done.output and ":5: " in done.output
    assert "4 measurement(s) spooled, 2 rejected" in done.output
    assert sorted(m["measure"]["bytes"] for m in spooled(tmp_path / "spool")) == [1, 2, 4, 6]


def test_rows_naming_their_own_unknown_meter_are_named_once_and_counted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rows = [download(i, meter="api_request") if i % 2 else download(i) for i in range(10)]
    rows[4]["measure"] = {"bytez": 1}  # a genuinely per-row problem, among them
    done = load(monkeypatch, tmp_path, jsonl_file(tmp_path, rows), "data_downloaded")
    assert done.exit_code == 1, done.output
    assert done.output.count("meter 'api_request' is not in the catalog") == 1
    assert "[unknown_meter] (5 rows)" in done.output
    assert done.output.count("no data field 'bytez'") == 1
    assert "4 measurement(s) spooled, 6 rejected" in done.output


def test_csv_with_known_meter_and_key_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    done = load(monkeypatch, tmp_path, csv_file(tmp_path, 5), "data_downloaded", "--key", "event")
    assert done.exit_code == 0, done.output
    assert len(spooled(tmp_path / "spool")) == 5
