"""Every command that asks a ledger takes its token from ``--token-file`` (or
``METERKIT_LEDGER_TOKEN_FILE``), by the rules ``ledger serve`` keeps: a private file, not
both options, and a warning when ``--token`` is typed on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import responses
from typer.testing import CliRunner

from meterkit_agent.cli import app as cli_app
from tests.agent.conftest import token_file

RUNNER = CliRunner()

COMMANDS = {
    "bill": ["bill", "--account", "acme", "--url", "http://ledger.test"],
    "reconcile": ["reconcile", "--url", "http://ledger.test"],
    "audit verify": ["audit", "verify", "--url", "http://ledger.test"],
    "notifications list": ["notifications", "list", "--url", "http://ledger.test"],
    "usage": ["usage", "--url", "http://ledger.test", "--meter", "m", "--from", "2026-01-01", "--to", "2026-01-02"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_ledger_command_reads_a_private_token_file_only(command: str, tmp_path: Path) -> None:
    tokens = token_file(tmp_path, "file-token-1")
    both = RUNNER.invoke(cli_app, [*COMMANDS[command], "--token", "typed-token-1", "--token-file", str(tokens)])
    assert both.exit_code == 2 and "give --token or --token-file, not both" in both.output
    tokens.chmod(0o644)
    shared = RUNNER.invoke(cli_app, COMMANDS[command], env={"METERKIT_LEDGER_TOKEN_FILE": str(tokens)})
    assert shared.exit_code == 2 and "chmod 600" in shared.output and "file-token-1" not in shared.output


@responses.activate
def test_the_token_file_is_sent_and_a_typed_token_is_warned_about(tmp_path: Path) -> None:
    url = "http://ledger.test/organizations/default/notifications"
    responses.get(url, json={"notifications": []})
    tokens = token_file(tmp_path, "file-token-1")
    listed = RUNNER.invoke(cli_app, [*COMMANDS["notifications list"], "--token-file", str(tokens)])
    assert listed.exit_code == 0 and "visible" not in listed.output
    assert responses.calls[-1].request.headers["Authorization"] == "Bearer file-token-1"
    typed = RUNNER.invoke(cli_app, [*COMMANDS["notifications list"], "--token", "typed-token-1"])
    assert typed.exit_code == 0 and "--token on the command line is visible to every user" in typed.output
    assert responses.calls[-1].request.headers["Authorization"] == "Bearer typed-token-1"
