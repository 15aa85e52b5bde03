"""Who may read what: the spool is private by default (0700 / 0600) and shared with a group
when asked (02770 / 0660, whatever the umask), for the deployment where the application's
user writes and the agent's user reads. The agent's own state stays private."""

from __future__ import annotations

import grp
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import meterkit
from meterkit._permissions import private_dir, spool_dir
from meterkit._spool import segments

SETGID = stat.S_ISGID


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def other_group() -> tuple[str, int]:
    """A group this process may give its files to, other than its own if it can."""
    candidates = [g.gr_gid for g in grp.getgrall()] if os.geteuid() == 0 else os.getgroups()
    gid = next((g for g in candidates if g != os.getgid()), os.getgid())
    return grp.getgrgid(gid).gr_name, gid


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """A umask that takes every group bit: the modes must not depend on it."""
    old = os.umask(0o077)
    yield
    os.umask(old)


def write_and_reject(**settings: Any) -> None:
    client = meterkit.Client(**settings)
    client.record("api_calls", account="acme", measure={"calls": 1})
    client.record("m", account=12345)  # type: ignore[arg-type]  # refused: into rejected/
    assert client.shutdown(10)


def test_by_default_the_spool_is_private(tmp_path: Path) -> None:
    spool = meterkit._settings.default_spool_dir()  # the project's, under $XDG_STATE_HOME (the tests' tmp dir)
    assert spool.is_relative_to(tmp_path / "state" / "meterkit")
    write_and_reject()  # the default spool, under $XDG_STATE_HOME (the tests' tmp dir)
    assert mode(spool) == 0o700
    assert mode(spool.parent) == 0o700  # below a private folder (pytest's), missing parents are private
    assert [mode(s) for s in segments(spool)] == [0o600]
    rejected = list((spool / "rejected").iterdir())
    assert mode(spool / "rejected") == 0o700 and [mode(r) for r in rejected] == [0o600]


@pytest.mark.usefixtures("strict_umask")
def test_a_shared_spool_is_02770_and_its_files_0660_of_the_group(tmp_path: Path) -> None:
    group, gid = other_group()
    spool = tmp_path / "srv" / "spool"
    write_and_reject(spool_dir=spool, spool_shared_group=group)
    made = [spool, *(d for d in spool.iterdir() if d.is_dir())]  # rejected/, and any other the writer makes
    for directory in made:
        assert mode(directory) == 0o2770 and directory.stat().st_gid == gid, directory
    # A missing parent: the group may pass, not write; the agent's state may live beside the spool.
    assert mode(spool.parent) == 0o750 and spool.parent.stat().st_gid == gid
    files = [*segments(spool), *(spool / "rejected").iterdir()]
    assert len(files) == 2
    for f in files:
        assert mode(f) == 0o660 and f.stat().st_gid == gid, f  # the group comes from the setgid bit


def test_the_setting_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    group, gid = other_group()
    monkeypatch.setenv("METERKIT_SPOOL_SHARED_GROUP", group)
    spool = tmp_path / "spool"
    write_and_reject(spool_dir=spool)
    assert mode(spool) == 0o2770 and spool.stat().st_gid == gid
    assert [mode(s) for s in segments(spool)] == [0o660]


def test_a_numeric_group_id_is_accepted(tmp_path: Path) -> None:
    _, gid = other_group()
    spool = tmp_path / "spool"
    write_and_reject(spool_dir=spool, spool_shared_group=str(gid))
    assert spool.stat().st_gid == gid and mode(spool) == 0o2770


def test_an_unknown_group_is_a_config_error_as_an_argument_and_a_warning_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(meterkit.ConfigError, match="no group named 'no-such-group-xyz'"):
        meterkit.Client(spool_dir=tmp_path / "a", spool_shared_group="no-such-group-xyz")
    monkeypatch.setenv("METERKIT_SPOOL_SHARED_GROUP", "no-such-group-xyz")
    with caplog.at_level(logging.WARNING):
        write_and_reject(spool_dir=tmp_path / "b")
    assert "METERKIT_SPOOL_SHARED_GROUP" in caplog.text
    assert mode(tmp_path / "b") == 0o700  # fell back to the default


def test_a_shared_spool_stays_shared_for_a_process_without_the_setting(tmp_path: Path) -> None:
    group, _ = other_group()
    spool = spool_dir(tmp_path / "spool", group)  # made shared by the deployment
    write_and_reject(spool_dir=spool)  # an application started without the variable
    assert mode(spool) == 0o2770
    assert [mode(s) for s in segments(spool)] == [0o660]


def test_a_shared_spool_open_to_others_loses_only_their_access(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    spool.chmod(0o2777)
    write_and_reject(spool_dir=spool)
    assert mode(spool) == 0o2770


def test_the_agents_state_beside_a_shared_spool_stays_private(tmp_path: Path) -> None:
    group, _ = other_group()
    srv = tmp_path / "srv"
    srv.mkdir()
    srv.chmod(0o755)  # an ordinary folder, as /var/lib is
    spool_dir(srv / "meterkit" / "spool", group)
    assert mode(private_dir(srv / "meterkit" / "agent")) == 0o700
    assert mode(private_dir(srv / "other" / "agent")) == 0o700
    assert mode(srv / "other") == 0o777 & ~current_umask()  # a parent, as `mkdir -p` makes it


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_existing_directory_of_ours_is_made_shared_when_asked(tmp_path: Path) -> None:
    group, gid = other_group()
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    spool_dir(spool, group)
    assert mode(spool) == 0o2770 and spool.stat().st_gid == gid


# -- the agent's side of the deployment ---------------------------------------------------


class _Host:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.catalog = None
        self.tailed: list[Path] = []

    def tail(self, directory: Path, poll_interval: float) -> None:
        self.tailed.append(directory)


@pytest.mark.usefixtures("strict_umask")
def test_the_agents_spool_receiver_makes_the_directory_shared_when_configured(tmp_path: Path) -> None:
    from meterkit_agent.receivers.spool import FACTORY, SpoolReceiverConfig

    group, gid = other_group()
    host = _Host(tmp_path / "state")
    FACTORY.create("spool", SpoolReceiverConfig(directory=tmp_path / "shared", shared_group=group), host)
    FACTORY.create("spool", SpoolReceiverConfig(directory=tmp_path / "private"), host)
    assert mode(tmp_path / "shared") == 0o2770 and (tmp_path / "shared").stat().st_gid == gid
    assert mode(tmp_path / "private") == 0o700
    assert host.tailed == [tmp_path / "shared", tmp_path / "private"]
    with pytest.raises(ValueError, match="no group named"):
        SpoolReceiverConfig(directory=tmp_path / "x", shared_group="no-such-group-xyz")


def test_status_json_is_private_whatever_the_umask(tmp_path: Path) -> None:
    from meterkit_agent.pipeline.telemetry import AgentMetrics, read_status

    state = tmp_path / "state"
    state.mkdir()
    (state / "status.tmp").write_bytes(b"{}")  # left more open by an older agent
    (state / "status.tmp").chmod(0o644)
    old = os.umask(0)
    try:
        metrics = AgentMetrics(state, lambda: 0)
        metrics.received.add(1)
        metrics.shutdown()  # a last export
    finally:
        os.umask(old)
    assert read_status(state) is not None
    assert mode(state / "status.json") == 0o600


def test_the_http_receivers_spool_folder_is_private(tmp_path: Path) -> None:
    from meterkit_agent.receivers.http import FACTORY, HttpReceiverConfig

    host = _Host(tmp_path / "state")
    host.state_dir.mkdir(mode=0o700)
    receiver = FACTORY.create("http", HttpReceiverConfig(endpoint="127.0.0.1:0"), host)
    try:
        [spool] = host.tailed
        assert spool.parent.name == "http-spool"
        assert mode(spool.parent) == 0o700 and mode(spool) == 0o700
    finally:
        receiver.sink.close()
