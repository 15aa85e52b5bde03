"""docs/cli.md is the command tree rendered: it names every command, its options and the
exit codes, and cannot drift from the commands."""

from __future__ import annotations

from pathlib import Path

import typer

from meterkit_agent.cli import app
from meterkit_agent.cli.reference import commands, render

DOC = Path(__file__).resolve().parents[3] / "docs" / "cli.md"
ROOT = typer.main.get_command(app)


def test_docs_cli_md_is_the_command_tree_rendered() -> None:
    assert DOC.read_text(encoding="utf-8") == render(ROOT), (
        "docs/cli.md differs from the commands: python -m meterkit_agent.cli.reference > docs/cli.md"
    )


def test_the_page_names_every_command_its_options_and_the_exit_codes() -> None:
    page = render(ROOT)
    for code, meaning in (("0", "ok"), ("1", "found problems"), ("2", "bad usage or configuration")):
        assert f"| {code} | " in page and meaning in page
    for path, command in commands(ROOT):
        assert f"## `meterkit {' '.join(path)}`" in page
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help" and not param.hidden:
                assert f"`{param.opts[0]}" in page, (path, param.opts)
    assert "## `meterkit agent run`" in page and "| `--url URL` |" in page
    assert "`--to URL`" not in page  # the old name of agent run's --url is no part of the reference
