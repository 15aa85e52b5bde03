"""Host-shared rate limits: four real processes on one limit hold it within one unit."""

from __future__ import annotations

from pathlib import Path

import meterkit
from meterkit._hostshare import HostTable, key_hash

from .limits_helpers import results, start_hammers, write_plans


def test_four_processes_share_one_host_limit(tmp_path: Path) -> None:
    plans = write_plans(tmp_path / "plans.yaml", "{meter: api_calls, rate: 200, per: second, burst: 50}")
    procs = start_hammers(4, str(plans), str(tmp_path / "state"), str(tmp_path / "spool"), "1.5")
    total, first, last = results(procs)
    elapsed = (last - first) / 1e9
    bound = 50 + 200 * elapsed + 1
    assert total <= bound, (total, bound)
    # and the limit is reached, not merely respected by refusing everything
    assert total >= 50 + 200 * elapsed * 0.5, (total, bound)


def test_a_process_in_the_same_table_sees_another_ones_use(tmp_path: Path) -> None:
    plans = write_plans(tmp_path / "plans.yaml", "{meter: api_calls, rate: 1, per: hour, burst: 3}")
    procs = start_hammers(1, str(plans), str(tmp_path / "state"), str(tmp_path / "spool"), "0.2")
    assert results(procs)[0] == 3
    meterkit.configure(spool_dir=tmp_path / "spool", plans=plans, limits_state_dir=tmp_path / "state")
    decision = meterkit.allow("api_calls", account="acme")
    assert not decision.allowed and decision.reason == "rate limited" and decision.retry_after > 3000


def test_the_table_is_private_and_reused_slots_are_expired_ones(tmp_path: Path) -> None:
    table = HostTable(tmp_path / "state", slots=4)
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert table.path.stat().st_mode & 0o777 == 0o600
    table.acquire()
    try:
        offsets = {table.find(key_hash(f"k{i}"), now_ns=100) for i in range(4)}
        assert len(offsets) == 4
        assert table.find(key_hash("k0"), now_ns=100) in offsets  # found again, not claimed twice
    finally:
        table.release()
