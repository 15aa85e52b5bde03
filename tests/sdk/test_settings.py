from __future__ import annotations

from pathlib import Path

import pytest

from meterkit import ConfigError
from meterkit._settings import default_spool_dir, resolve


def test_argument_beats_environment_beats_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve().flush_interval_millis == 200
    monkeypatch.setenv("METERKIT_FLUSH_INTERVAL_MILLIS", "50")
    monkeypatch.setenv("METERKIT_SPOOL_DIR", str(tmp_path))
    monkeypatch.setenv("METERKIT_MODE", "strict")
    assert resolve().flush_interval_millis == 50
    assert resolve().spool_dir == tmp_path
    assert resolve().mode == "strict"
    assert resolve(flush_interval_millis=10).flush_interval_millis == 10


def test_bad_environment_value_warns_and_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("METERKIT_MAX_QUEUE_SIZE", "lots")
    monkeypatch.setenv("METERKIT_DURABILITY", "paranoid")
    settings = resolve()
    assert settings.max_queue_size == 1_048_576 and settings.durability == "buffered"
    text = caplog.text
    assert "METERKIT_MAX_QUEUE_SIZE" in text and "METERKIT_DURABILITY" in text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "lenient"},
        {"max_queue_size": 0},
        {"flush_interval_millis": -1},
        {"max_batch_size": 10, "max_queue_size": 5},
    ],
)
def test_bad_argument_raises(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        resolve(**kwargs)


def test_unknown_setting_raises() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve(flush_intervall=3)


def test_default_spool_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    spool = default_spool_dir()  # one folder per project: <name>-<hash of its path>/spool
    assert spool.parent.parent == tmp_path / "meterkit" and spool.name == "spool"
