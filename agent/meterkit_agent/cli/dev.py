"""``meterkit dev``: a ledger and an agent together, for local work on one project.

Both run as child processes of this command, from the project directory, so the agent's
default spool is the one the application writes when run from there (the project's state
directory, :func:`meterkit._settings.project_state_dir`). The ledger requires a bearer
token generated for the session into a file only its owner may read, in that state
directory; the token is handed to the agent in its environment and never printed (the
printed ``usage`` command names the file). SIGINT (Ctrl-C) or SIGTERM stops the agent
first, so it drains what it holds into the still-running ledger, then the ledger; the
command exits 0. The children run in their own session, so the terminal's Ctrl-C reaches
this command alone and the order holds; on Linux each also gets SIGTERM if this command
dies without stopping them (``PR_SET_PDEATHSIG``), so none is left behind.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

import meterkit

from .output import fail

#: How long a child may take to stop after SIGTERM (the agent's drain is 10 s by default).
STOP_SECONDS = 30.0
#: How long the ledger may take to listen.
START_SECONDS = 60.0


def dev_cmd(
    directory: Annotated[
        Path, typer.Option("--dir", metavar="DIR", help="the project directory (meters.yaml, agent.yaml)")
    ] = Path(),
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="the ledger's port on 127.0.0.1")] = 8765,
) -> None:
    """Run a local ledger and an agent for this project until Ctrl-C; print where data is
    read and sent and how to see usage. Exit 0 when stopped by Ctrl-C or SIGTERM, 2 for a
    project or port that cannot be used, 1 when the ledger or the agent stops by itself."""
    from meterkit._settings import ENV_PROJECT, project_state_dir

    from ..paths import default_ledger_url

    project = directory.resolve()
    missing = [name for name in ("meters.yaml", "agent.yaml") if not (project / name).is_file()]
    if missing:
        raise fail(f"no {' or '.join(missing)} in {project}: run `meterkit init {directory}` first")
    hint = _usage_hint(project)
    if _port_in_use(port):
        raise fail(f"127.0.0.1:{port} is in use (another ledger?): give --port")
    os.environ[ENV_PROJECT] = str(project)  # this process resolves the defaults as the agent will
    spool = _spool_read(project)
    state = project_state_dir(project)
    token_file = _write_token(state / "dev-ledger.token")
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.pop("METERKIT_LEDGER_TOKEN", None)  # the ledger takes the file; the agent gets it below
    env.pop("METERKIT_LEDGER_TOKEN_FILE", None)
    stop = _stop_on_signals()
    db = default_ledger_url(project)
    serve = ["ledger", "serve", "--db", db, "--port", str(port), "--token-file", str(token_file)]
    ledger = _start("ledger", serve, env)
    children = [ledger]
    try:
        if not _wait_listening(ledger, port, stop):
            code = _stop_all(children)
            if stop.is_set():
                return
            raise fail(f"the ledger did not start listening on 127.0.0.1:{port} (exit {code})", 1)
        agent_env = {**env, "METERKIT_LEDGER_URL": url, "METERKIT_LEDGER_TOKEN": token_file.read_text().strip()}
        agent = _start("agent", ["agent", "run", "--config", str(project / "agent.yaml")], agent_env, cwd=project)
        children.append(agent)
        _announce(project, state, spool, url, db, token_file, hint, ledger.pid, agent.pid)
        while not stop.wait(0.2):
            for child in children:
                if child.poll() is not None:
                    name = "ledger" if child is ledger else "agent"
                    _stop_all(children)
                    raise fail(f"the {name} stopped by itself (exit {child.returncode}); stopped the rest", 1)
    finally:
        _stop_all(children)
    typer.echo("meterkit dev: stopped the agent and the ledger", err=True)


def _usage_hint(project: Path) -> str:
    """``--meter CODE --field FIELD`` for the usage hint: the catalog's first meter and its
    first MEASURE field (a SUM needs one). Exit 2 for a missing or broken catalog."""
    try:
        catalog = meterkit.load_catalog(project / "meters.yaml")
    except meterkit.CatalogError as exc:
        raise fail(f"{project / 'meters.yaml'}: {exc}") from None
    for meter in catalog.meters.values():
        measures = [f.code for f in meter.data_fields if f.category.value == "measure"]
        return f"--meter {meter.code}" + (f" --field {measures[0]}" if measures else "")
    return "--meter METER --field FIELD"


def _spool_read(project: Path) -> Path | None:
    """The spool the project's agent.yaml reads (None: it has no spool receiver), with a
    warning when the environment sends this shell's applications elsewhere. Exit 2 naming
    each problem of a configuration the agent could not run."""
    from meterkit._settings import ENV_SPOOL_DIR

    from ..config import ConfigFileError, load_config

    try:
        cfg = load_config(project / "agent.yaml")
    except ConfigFileError as exc:
        for line in exc.problems:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None
    receiver = next((c for cid, c in cfg.receivers.items() if cid.split("/")[0] == "spool"), None)
    spool = Path(receiver.directory).resolve() if receiver is not None else None
    elsewhere = os.environ.get(ENV_SPOOL_DIR)
    if elsewhere and spool is not None and Path(elsewhere).resolve() != spool:
        typer.echo(f"warning: {ENV_SPOOL_DIR}={elsewhere} here, but the agent reads {spool}", err=True)
    return spool


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _write_token(path: Path) -> Path:
    """A fresh token in ``path`` (0600, its directory 0700), replaced atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staged = path.with_name(path.name + ".new")
    staged.unlink(missing_ok=True)
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    os.replace(staged, path)
    return path


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def _start(name: str, args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(  # noqa: S603 - this interpreter running meterkit's own CLI
            [sys.executable, "-m", "meterkit_agent.cli", *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    except OSError as exc:
        raise fail(f"cannot start the {name}: {exc.strerror or exc}", 1) from None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when this command's process is gone."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _wait_listening(ledger: subprocess.Popen[bytes], port: int, stop: threading.Event) -> bool:
    """True once the ledger accepts connections; False if it exits or a signal comes first."""
    waited = 0.0
    while waited < START_SECONDS and ledger.poll() is None and not stop.is_set():
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return ledger.poll() is None
        stop.wait(0.05)
        waited += 0.05
    return False


def _stop_all(children: list[subprocess.Popen[bytes]]) -> int | None:
    """SIGTERM each child, last started first, and wait for it (SIGKILL after
    :data:`STOP_SECONDS`). Returns the first child's exit code."""
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return children[0].returncode if children else None


def _announce(
    project: Path, state: Path, spool: Path | None, url: str, db: str, token_file: Path, hint: str, *pids: int
) -> None:
    reads = (
        f"  reads   {spool}   (the SDK's default spool when the app runs from {project}\n"
        f"          or with METERKIT_PROJECT={project})"
        if spool is not None
        else "  reads   (agent.yaml has no spool receiver)"
    )
    lines = [
        f"meterkit dev: project {project}",
        f"  state   {state}",
        reads,
        f"  sends   {url}   (ledger {db})",
        f"  usage   meterkit usage {hint} --url {url} --token-file {token_file}",
        f"  pids    ledger {pids[0]}, agent {pids[1]}; Ctrl-C stops both",
    ]
    typer.echo("\n".join(lines), err=True)
