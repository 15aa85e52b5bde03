"""Helpers for testing code that uses the ledger (public API): a real, throwaway
PostgreSQL server, and a real redis-server (:func:`running_redis`, for global rate limits).

::

    from meterkit_agent.testing import postgres_server

    with postgres_server() as url:  # postgresql://meterkit@127.0.0.1:<port>/postgres
        ledger = Ledger(url)

The ledger's own tests and ``make bench`` both start their PostgreSQL here, so a test and
a benchmark run against a server set up the same way, and neither imports the other
(``bench/pgserver.py`` re-exports :func:`postgres_server`). A real server, not a mock:
what matters on PostgreSQL (concurrent ``ON CONFLICT`` inserts from several ledger
processes, transactions, types) is exactly what a fake would get wrong.

The server listens on 127.0.0.1 only, on a free port, with its data and socket in a
temporary folder, trusting local connections (it is reachable from this machine alone and
lives as long as the ``with`` block). Run as root, it runs as the ``postgres`` user, since
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server programs (``initdb``, ``pg_ctl``) are not installed."""


@dataclass(frozen=True)
class Postgres:
    """A running throwaway server: its URL, its data folder and its main process."""

    url: str
    data: Path
    pid: int


def _pg_bin(name: str) -> str | None:
    """A server program: the newest installed version's (Debian keeps them off the PATH,
    under /usr/lib/postgresql/<version>/bin), else whatever the PATH has."""
    found = shutil.which(name)
    if found and "/usr/local/bin" not in found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_order)
    return versions[-1] if versions else found


def _version_order(path: str) -> tuple[int, str]:
    version = Path(path).parent.parent.name
    return (int(version), path) if version.isdigit() else (0, path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(what: str, args: list[str], log: Path | None = None) -> None:
    """Run a server program; if it fails, raise with what it (and the server's log) said."""
    # The arguments are this module's own: the server programs found above, paths it made.
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        if log is not None and log.exists():
            said += "\n" + log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{what} failed ({done.returncode}): {said}")


@contextlib.contextmanager
def running_postgres(*, durable: bool = False) -> Iterator[Postgres]:
    """Start a PostgreSQL server for the ``with`` block; stop it and delete its data after.

    ``durable=False`` (tests) turns ``fsync`` off: nothing outlives the block, so nothing
    needs to survive a power cut, and tests run faster. ``durable=True`` (benchmarks) keeps
    PostgreSQL's defaults, so a commit costs what it costs in production. Raises
    :class:`PostgresUnavailable` if the server programs are not installed.
    """
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise PostgresUnavailable("PostgreSQL server programs (initdb, pg_ctl) not found: apt-get install postgresql")
    as_user: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="meterkit-pg-"))
    data = base / "data"
    try:
        if as_user:
            shutil.chown(base, "postgres")
        _run("initdb", [*as_user, initdb, "-D", str(data), "-U", "meterkit", "--auth=trust", "-E", "UTF8"])
        port = _free_port()
        opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1" + ("" if durable else " -c fsync=off")
        _run(
            "pg_ctl start",
            [*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"],
            base / "log",
        )
        try:
            pid = int((data / "postmaster.pid").read_text().split()[0])
            yield Postgres(f"postgresql://meterkit@127.0.0.1:{port}/postgres", data, pid)
        finally:
            with contextlib.suppress(Exception):
                _run("pg_ctl stop", [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"])
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[str]:
    """The URL of a throwaway PostgreSQL server on 127.0.0.1 (see :func:`running_postgres`)."""
    with running_postgres(durable=durable) as server:
        yield server.url


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def running_redis(timeout: float = 10.0) -> Iterator[str | None]:
    """A fresh redis-server on 127.0.0.1, a free port, no persistence, waited for by PING
    (not by sleeping) and stopped at the end; yields its ``redis://`` URL, or None when no
    ``redis-server`` is installed (the tests then skip, the bench leaves its Redis rows out)."""
    binary = shutil.which("redis-server") or shutil.which("/usr/bin/redis-server")
    if binary is None:
        yield None
        return
    port = _free_port()
    with tempfile.TemporaryDirectory() as work:
        proc = subprocess.Popen(  # noqa: S603 - our own arguments, the binary found on PATH
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", work],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + timeout
            while not _pings(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)
