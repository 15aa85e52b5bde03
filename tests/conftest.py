from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import meterkit
from meterkit import _api, _guard, _meter

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CATALOG = EXAMPLES / "meters.yaml"


@pytest.fixture(autouse=True)
def _raise_background_errors() -> Iterator[None]:
    """A background error swallowed by meterkit fails the test that caused it."""
    _guard.RAISE_BACKGROUND_ERRORS = True
    _guard.captured.clear()
    _guard._logged.clear()
    yield
    _guard.RAISE_BACKGROUND_ERRORS = False
    errors, _guard.captured[:] = list(_guard.captured), []
    if errors:
        raise errors[0]


@pytest.fixture(autouse=True)
def _no_global_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test starts unconfigured, with the default spool pointing into its tmp dir."""
    for name in list(__import__("os").environ):
        if name.startswith(("METERKIT_", "M3TER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    _meter._unchecked.clear()  # meters another test (or an import) made are not this test's
    yield
    meterkit.shutdown(5)
    _api._client = None


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def catalog() -> meterkit.Catalog:
    return meterkit.load_catalog(CATALOG)


@contextmanager
def small_tmpfs(where: Path, size: str, instead: str) -> Iterator[Path]:
    """A real, small filesystem to fill: a tmpfs of ``size`` mounted at ``where``. Skips the
    test (saying what covers the same ground ``instead``) where this machine cannot mount one."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip(f"mounting a {size} tmpfs needs root; {instead}")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); {instead}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
