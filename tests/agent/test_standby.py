"""A standby agent, against real processes: two ``agent run --standby`` on one state
directory and spool while a producer writes. The leader is SIGKILLed, or paused with
SIGSTOP and woken after the standby took over, round after round. At the end the ledger
holds exactly what was recorded (count and sum), the journal's commits come in epoch
order and reconcile with the ledger, and a woken leader sends at most one late request
per pause (the window :mod:`meterkit_agent.lease` describes) and commits nothing."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from meterkit_agent.audit.journal import Journal
from meterkit_agent.lease import read_lease
from tests.agent.conftest import (
    TOKEN,
    FaultProxy,
    Proc,
    cli_cmd,
    spawn_producer,
    start_ledger,
    wait_for,
    write_agent_config,
)

N = 12_000
ROUNDS = 6


def start_standby(tmp_path: Path, config: Path, name: str) -> Proc:
    args = cli_cmd("agent", "run", "--config", str(config), "--standby", "-v")
    return Proc(args, tmp_path / f"{name}.log", env={"LEDGER_TOKEN": TOKEN}).start()


def leader_epoch(state: Path) -> tuple[int, int]:
    info = read_lease(state)
    return (info.epoch, info.pid) if info is not None and info.alive else (0, 0)


def test_the_standby_takes_over_from_a_killed_or_paused_leader_and_nothing_is_lost_or_doubled(
    tmp_path: Path,
) -> None:
    ledger = start_ledger(tmp_path / "ledger")
    proxy = FaultProxy(ledger.url)
    spool, state = tmp_path / "spool", tmp_path / "agent-state"
    config = write_agent_config(tmp_path, spool, proxy.url)
    producer = spawn_producer(spool, N, pause_every=500)
    agents = {name: start_standby(tmp_path, config, name) for name in ("a", "b")}
    try:
        wait_for(lambda: leader_epoch(state)[0] == 1, what="a leader")
        paused = 0
        for round_ in range(ROUNDS):
            epoch, pid = leader_epoch(state)
            name = next(n for n, p in agents.items() if p.popen is not None and p.popen.pid == pid)
            if round_ % 2 == 0:
                agents[name].kill(signal.SIGKILL)
                wait_for(lambda e=epoch: leader_epoch(state)[0] == e + 1, what="take-over after SIGKILL")
                agents[name] = start_standby(tmp_path, config, f"{name}{round_}")
            else:
                agents[name].popen.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
                wait_for(lambda e=epoch: leader_epoch(state)[0] == e + 1, what="take-over after SIGSTOP")
                agents[name].popen.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
                paused += 1
            wait_for(lambda: ledger.count() > 0, what="deliveries")
        assert producer.wait(120) == 0
        wait_for(lambda: ledger.count() >= N, timeout=90, what="everything delivered")

        usage = ledger.get(
            "/organizations/test-org/usage",
            meter="data_downloaded",
            account="acme",
            aggregation="SUM",
            field="bytes",
        )["data"]
        assert ledger.count() == N
        assert int(usage[0]["value"]) == sum(range(N))

        # Commits only ever come from the current leader: epochs never go back.
        epochs = [e["epoch"] for e in Journal(state).tail_after(0) if e.get("type") == "delivery"]
        assert epochs == sorted(epochs) and epochs[-1] == ROUNDS + 1
        # A woken leader may have one request in flight: at most one late request per pause.
        sent = [int(h["x-meterkit-lease-epoch"]) for h in proxy.seen if "x-meterkit-lease-epoch" in h]
        late = sum(1 for i, e in enumerate(sent) if e < max(sent[: i + 1]))
        print(f"requests {len(sent)}, late {late}, pauses {paused}")
        assert late <= paused

        for proc in agents.values():
            if proc.alive():
                proc.kill(signal.SIGTERM)
        out = subprocess.run(
            [
                *cli_cmd("reconcile", "--state-dir", str(state), "--url", ledger.url, "--org", "test-org"),
                *("--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z", "--json"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={"METERKIT_LEDGER_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
            check=False,
        )
        report = json.loads(out.stdout)
        assert out.returncode == 0 and report["reconciled"], out.stdout[-2000:] + out.stderr
        assert sum(r["delivered"] for r in report["rows"]) == N
    finally:
        producer.kill()
        for proc in agents.values():
            if proc.popen is not None and proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)
                proc.kill(signal.SIGKILL)
        proxy.close()
        ledger.proc.kill()
