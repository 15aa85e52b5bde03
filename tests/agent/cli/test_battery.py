"""Every command, with a battery of bad inputs: none may end in a traceback, and each
answers with one of the documented exit codes (0 ok, 1 found problems, 2 bad usage or
configuration; docs/cli.md). Help reads as a conventional command line: ``-h``, no Python
types as metavars.

The commands are found by walking the command tree, so a command added later is in the
battery without a change here. Commands that serve until stopped (``agent run``, ``ledger
serve``) are given only inputs that must stop them at once, in a subprocess with a timeout."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from meterkit_agent.cli import app, package_version

#: Commands that run until stopped: exercised in a subprocess, never with inputs that would serve.
LONG_RUNNING = {("agent", "run"), ("ledger", "serve"), ("dev",)}
EXIT_CODES = {0, 1, 2}
UNREACHABLE = "http://127.0.0.1:1"


def leaves(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield path, command
        return
    yield path, command
    for name, sub in subcommands.items():
        yield from leaves(sub, (*path, name))


ROOT = typer.main.get_command(app)
ALL = list(leaves(ROOT))
COMMANDS = [(path, cmd) for path, cmd in ALL if not hasattr(cmd, "commands") and path not in LONG_RUNNING]


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("battery")
    garbage = root / "garbage.yaml"
    garbage.write_text("a: [unclosed\n\t- : : {{\n")
    empty = root / "empty.yaml"
    empty.write_text("")
    (root / "adir").mkdir()
    return {"missing": str(root / "missing.yaml"), "dir": str(root / "adir"), "garbage": str(garbage)} | {
        "empty_file": str(empty),
        "root": str(root),
    }


def values_for(param: Any, bad: dict[str, str]) -> list[str]:
    """The bad values to give one parameter, by what it takes."""
    described = param.type_descriptor
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return []
    if described.is_path:
        return [bad["missing"], bad["garbage"]]
    if described.is_choice:
        return ["nope"]
    if described.annotation is int or "int" in str(described.annotation):
        return ["99999"]
    if described.annotation is float:
        return ["-1", "x"]
    return ["", UNREACHABLE]  # empty, and a URL nothing answers at (a bad date is a string like any)


def base_args(command: Any, bad: dict[str, str]) -> list[str]:
    """Every required parameter given its first bad value."""
    args: list[str] = []
    for param in command.params:
        if not param.required:
            continue
        first = (values_for(param, bad) or ["x"])[0]
        if param.param_type_name == "argument":
            args.append(first)
        else:
            args += [param.opts[0], first]
    return args


def invocations(command: Any, bad: dict[str, str]) -> Iterator[list[str]]:
    base = base_args(command, bad)
    yield []
    yield base
    for param in command.params:
        if param.name == "help":
            continue
        for value in values_for(param, bad):
            if param.param_type_name == "argument":
                yield [value if p is param else (values_for(p, bad) or ["x"])[0] for p in command.params if p.required]
            else:
                yield [*base, param.opts[0], value]


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No default state, spool or ledger of the user's is read or written."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    monkeypatch.chdir(home)
    for name in ("METERKIT_SPOOL_DIR", "METERKIT_LEDGER_TOKEN", "METERKIT_AGENT_TOKEN", "METERKIT_CATALOG"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_no_command_ends_in_a_traceback(path: tuple[str, ...], command: Any, bad: dict[str, str]) -> None:
    runner = CliRunner()
    for args in invocations(command, bad):
        result = runner.invoke(app, [*path, *args])
        where = f"meterkit {' '.join(path)} {' '.join(args)}"
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"{where}: raised {result.exception!r}") from result.exception
        assert "Traceback" not in result.output, where
        assert result.exit_code in EXIT_CODES, f"{where}: exit {result.exit_code}\n{result.output}"


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterkit_agent.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_long_running_commands_refuse_bad_inputs_without_a_traceback(bad: dict[str, str], tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    cases = [
        ("ledger", "serve", "--port", "99999"),
        ("ledger", "serve", "--db", "mysql://x"),
        ("ledger", "serve", "--db", "sqlite:///" + bad["dir"]),
        ("ledger", "serve", "--catalog", bad["missing"]),
        ("ledger", "serve", "--plans", bad["garbage"]),
        ("agent", "run", *state, "--catalog", bad["missing"]),
        ("agent", "run", *state, "--config", bad["garbage"]),
        ("agent", "run", *state, "--config", bad["dir"]),
        ("agent", "run", *state, "--db", "mysql://x"),
        ("agent", "run", "--state-dir", bad["garbage"]),
    ]
    with ThreadPoolExecutor(max_workers=5) as pool:  # each is a process of its own: run them side by side
        results = list(pool.map(lambda args: (args, run(*args)), cases))
    for args, done in results:
        assert "Traceback" not in done.stderr + done.stdout, (args, done.stderr)
        assert done.returncode in (1, 2), (args, done.returncode, done.stderr)
        assert done.stderr.startswith("error:") or ": " in done.stderr, (args, done.stderr)


def test_version_and_short_help() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.strip() == f"meterkit {package_version()}"
    short, long = runner.invoke(app, ["agent", "run", "-h"]), runner.invoke(app, ["agent", "run", "--help"])
    assert short.exit_code == 0 and short.output == long.output and "-h, --help" in short.output


def test_every_help_takes_h_and_shows_no_python_types() -> None:
    runner = CliRunner()
    for path, _ in ALL:
        result = runner.invoke(app, [*path, "-h"])
        assert result.exit_code == 0 and "Usage:" in result.output, path
        for banned in ("<bool>", "list[", "Path", "<dict", "<tuple"):
            assert banned not in result.output, f"meterkit {' '.join(path)} --help shows {banned!r}:\n{result.output}"
