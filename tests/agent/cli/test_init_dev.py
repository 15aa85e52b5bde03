"""``meterkit init`` and ``meterkit dev``: a new project's files pass the checks as written,
``dev`` carries a record from the SDK to the ledger and stops both children on Ctrl-C, and
each project has its own default spool, agent state and ledger."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import requests
import typer
from typer.testing import CliRunner

from meterkit._settings import ENV_PROJECT, default_spool_dir, resolve
from meterkit_agent.cli import app as cli_app
from meterkit_agent.cli.dev import dev_cmd
from meterkit_agent.cli.init import init_cmd
from meterkit_agent.paths import default_ledger_url, default_state_dir
from meterkit_agent.receivers.spool import SpoolReceiverConfig
from tests.agent.conftest import free_port, wait_for

RUNNER = CliRunner()
# Registered here as well as in the meterkit command: these tests need not wait for it.
APP = typer.Typer()
APP.command("init")(init_cmd)
APP.command("dev")(dev_cmd)
DEV = "import typer; from meterkit_agent.cli.dev import dev_cmd; typer.run(dev_cmd)"

APP_CODE = """
import meterkit
meterkit.configure(catalog="meters.yaml", mode="strict")
with meterkit.context(account="acme"):
    meterkit.record("api_calls", measure={"calls": 3}, what={"endpoint": "/x"}, who={"user": "u1"})
meterkit.shutdown()
"""


def _clean_env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERKIT_")}
    return {**env, "XDG_STATE_HOME": str(state)}


def test_init_writes_files_that_pass_both_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    project = tmp_path / "shop"
    written = RUNNER.invoke(APP, ["init", str(project)])
    assert written.exit_code == 0, written.output
    monkeypatch.chdir(project)  # agent.yaml names its catalog relative to the project
    meters = RUNNER.invoke(cli_app, ["meters", "validate", "meters.yaml"])
    assert meters.exit_code == 0 and "1 meter(s)" in meters.output and "0 warning(s)" in meters.output
    agent = RUNNER.invoke(cli_app, ["agent", "validate-config", "agent.yaml"])
    assert agent.exit_code == 0, agent.output
    assert "pipeline spool -> validate, derive, batch -> m3ter" in agent.output
    assert "http://127.0.0.1:8765" in agent.output and "balances" not in agent.output.split("service:")[1]
    assert str(default_spool_dir()) in agent.output  # the agent reads the SDK's default spool


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    (tmp_path / "meters.yaml").write_text("mine\n")
    refused = RUNNER.invoke(APP, ["init", str(tmp_path)])
    assert refused.exit_code == 2 and "--force" in refused.output
    assert (tmp_path / "meters.yaml").read_text() == "mine\n" and not (tmp_path / "agent.yaml").exists()
    forced = RUNNER.invoke(APP, ["init", str(tmp_path), "--force"])
    assert forced.exit_code == 0 and "code: api_calls" in (tmp_path / "meters.yaml").read_text()


def test_two_projects_have_their_own_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv(ENV_PROJECT, raising=False)
    monkeypatch.delenv("METERKIT_SPOOL_DIR", raising=False)
    seen = {}
    for name in ("a", "b", "b2"):
        (tmp_path / name / "app").mkdir(parents=True)
        monkeypatch.chdir(tmp_path / name / "app")  # two projects may share a directory name
        spool = default_spool_dir()
        assert resolve().spool_dir == spool == SpoolReceiverConfig().directory
        assert spool.parent == default_state_dir().parent and spool.parent.name.startswith("app-")
        assert default_ledger_url() == f"sqlite:///{spool.parent / 'ledger.db'}"
        seen[name] = spool
    assert len(set(seen.values())) == 3
    monkeypatch.setenv(ENV_PROJECT, str(tmp_path / "a" / "app"))  # a sidecar started elsewhere
    assert default_spool_dir() == seen["a"] and SpoolReceiverConfig().directory == seen["a"]
    monkeypatch.setenv("METERKIT_SPOOL_DIR", str(tmp_path / "explicit"))  # explicit settings win as before
    assert resolve().spool_dir == tmp_path / "explicit"
    assert resolve(spool_dir=tmp_path / "given").spool_dir == tmp_path / "given"


def test_dev_refuses_a_project_without_files(tmp_path: Path) -> None:
    result = RUNNER.invoke(APP, ["dev", "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "meterkit init" in result.output


@pytest.fixture(scope="module")
def dev_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[str], Path, Path, int]]:
    root = tmp_path_factory.mktemp("dev")
    project, state = root / "proj", root / "state"
    assert RUNNER.invoke(APP, ["init", str(project)]).exit_code == 0
    port = free_port()
    dev = subprocess.Popen(
        [sys.executable, "-c", DEV, "--dir", str(project), "--port", str(port)],
        env=_clean_env(state),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield dev, project, state, port
    if dev.poll() is None:
        dev.kill()
        dev.wait()


def _lines(stream: IO[str]) -> queue.Queue[str]:
    """The stream's lines as they come, read on a thread: a wait on one has a timeout."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_dev_delivers_a_record_and_stops_both_on_ctrl_c(
    dev_session: tuple[subprocess.Popen[str], Path, Path, int],
) -> None:
    dev, project, state, port = dev_session
    assert dev.stdout is not None
    lines, output = _lines(dev.stdout), list[str]()
    while not output or not output[-1].lstrip().startswith("pids"):
        output.append(lines.get(timeout=60))
    text = "".join(output)
    project_state = next((state / "meterkit").iterdir())
    token_file = project_state / "dev-ledger.token"
    token = token_file.read_text().strip()
    assert token_file.stat().st_mode & 0o777 == 0o600 and token not in text
    assert f"reads   {project_state / 'spool'}" in text and f"sends   http://127.0.0.1:{port}" in text
    assert f"meterkit usage --meter api_calls --field calls --url http://127.0.0.1:{port}" in text
    # The application, run from its project with no setting, writes the spool the agent reads.
    subprocess.run([sys.executable, "-c", APP_CODE], cwd=project, env=_clean_env(state), check=True, timeout=60)

    def delivered() -> bool:
        answer = requests.get(
            f"http://127.0.0.1:{port}/organizations/default/usage",
            params={"meter": "api_calls", "field": "calls"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        return answer.status_code == 200 and [r["value"] for r in answer.json()["data"]] == [3]

    wait_for(delivered, 60, "the record in the ledger")
    pids = [int(p) for p in output[-1].replace(",", " ").replace(";", " ").split() if p.isdigit()]
    assert len(pids) == 2
    dev.send_signal(signal.SIGINT)
    assert dev.wait(60) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
