"""Where each destination keeps its progress, and who may take it over."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from meterkit_agent.paths import StateMismatch, claim_state, destination_dir, destination_dirs


def test_every_exporter_id_has_a_directory_of_its_own(tmp_path: Path) -> None:
    ids = ["file/a/b", "file/a_b", "file/a%2Fb", "m3ter"]
    dirs = {destination_dir(tmp_path, cid, primary=False) for cid in ids}
    assert len(dirs) == len(ids)
    assert destination_dir(tmp_path, "m3ter", primary=True) == tmp_path


def test_reordered_exporters_cannot_take_each_others_progress(tmp_path: Path) -> None:
    claim_state(tmp_path, "m3ter", alone=False)
    claim_state(tmp_path, "m3ter", alone=False)  # the same one again: fine
    with pytest.raises(StateMismatch, match="holds the progress of exporter 'm3ter', not of 'ledger'"):
        claim_state(tmp_path, "ledger", alone=False)
    claim_state(tmp_path, "m3ter/renamed", alone=True)  # a single exporter owns its directory
    assert (tmp_path / "destination").read_text().strip() == "m3ter/renamed"


def test_a_directory_from_before_the_record_is_claimed_by_its_journals_exporter(tmp_path: Path) -> None:
    entries = [
        {"type": "sdk_tally", "entries": []},
        {"type": "delivery", "exporters": [{"exporter": "m3ter/billing", "status": "acknowledged"}]},
        {"type": "sdk_tally", "entries": []},
    ]
    (tmp_path / "journal.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    with pytest.raises(StateMismatch, match="'m3ter/billing', not of 'm3ter/record'"):
        claim_state(tmp_path, "m3ter/record", alone=False)
    claim_state(tmp_path, "m3ter/billing", alone=False)
    assert (tmp_path / "destination").read_text().strip() == "m3ter/billing"


def test_destinations_are_listed_by_exporter_id(tmp_path: Path) -> None:
    claim_state(tmp_path, "m3ter", alone=False)
    record = destination_dir(tmp_path, "ledger/eu", primary=False)
    record.mkdir(parents=True)
    claim_state(record, "ledger/eu", alone=False)
    assert destination_dirs(tmp_path) == {"m3ter": tmp_path, "ledger/eu": record}
