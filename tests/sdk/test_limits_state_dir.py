"""The default home of host-scope limit state is one per spool, so per project: the
processes of one application share it, two applications of one user never do (as their
default spools, issue 15)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meterkit._hostshare import _private_dir, default_state_dir
from meterkit._settings import ENV_LIMITS_STATE_DIR, project_state_dir, resolve_limits


def test_one_default_per_spool_named_by_its_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_LIMITS_STATE_DIR, raising=False)
    app_a, app_b = project_state_dir(tmp_path / "shop") / "spool", project_state_dir(tmp_path / "blog") / "spool"
    a, b = (resolve_limits(spool, "production").limits_state_dir for spool in (app_a, app_b))
    assert a != b and a.parent == b.parent
    assert a.parent.name == f"meterkit-{os.getuid()}" and a.parent.parent in (Path("/dev/shm"), Path("/tmp"))
    assert a.name.startswith("shop-") and b.name.startswith("blog-")
    # every process of one application (one spool, however spelled) shares one table
    assert resolve_limits(Path(str(app_a) + "/"), "production").limits_state_dir == a
    assert default_state_dir(app_a.parent / "x" / ".." / "spool") == a
    # two projects of the same name in different places do not
    other = project_state_dir(tmp_path / "elsewhere" / "shop") / "spool"
    assert default_state_dir(other) != a and default_state_dir(other).name.startswith("shop-")
    # a spool that is not a project's is named by itself
    assert default_state_dir(tmp_path / "my spool").name.startswith("my_spool-")


def test_an_explicit_directory_or_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_LIMITS_STATE_DIR, str(tmp_path / "shared"))
    assert resolve_limits(tmp_path / "spool", "production").limits_state_dir == tmp_path / "shared"
    given = resolve_limits(tmp_path / "spool", "production", limits_state_dir=tmp_path / "given")
    assert given.limits_state_dir == tmp_path / "given"


def test_every_directory_made_on_the_way_is_private(tmp_path: Path) -> None:
    leaf = tmp_path / "meterkit-1" / "app-abc" / "x"
    old = os.umask(0o022)  # a usual umask: a plain mkdir(parents=True) would make 0755 parents
    try:
        _private_dir(leaf)
    finally:
        os.umask(old)
    for made in (leaf, leaf.parent, leaf.parent.parent):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
