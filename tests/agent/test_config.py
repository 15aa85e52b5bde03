from __future__ import annotations

from pathlib import Path

import pytest

from meterkit_agent.config import ConfigFileError, load_config, simple_config
from meterkit_agent.exporters.m3ter import M3terExporterConfig
from meterkit_agent.receivers.http import HttpReceiverConfig
from tests.conftest import EXAMPLES


def test_the_example_configuration_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M3TER_CLIENT_ID", "id")
    monkeypatch.setenv("M3TER_CLIENT_SECRET", "s3cr3t-value")
    cfg = load_config(EXAMPLES / "agent.yaml")
    assert cfg.pipeline.processors == ["validate", "derive", "enrich", "batch"]
    http = cfg.receivers["http"]
    assert isinstance(http, HttpReceiverConfig) and http.token is None  # ${VAR:-} left it unset
    m3ter = cfg.exporters["m3ter"]
    assert isinstance(m3ter, M3terExporterConfig) and m3ter.client_secret is not None
    assert "s3cr3t-value" not in repr(cfg)  # secrets never show in reprs or logs


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    return info.value.problems


def test_environment_values_cannot_change_the_structure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORG", "acme\nexporters: {}")
    cfg = load_config(
        write(
            tmp_path,
            "# ${NOT_A_VARIABLE} in a comment is ignored\n"
            "receivers: {spool: {}}\n"
            "exporters: {ledger: {org_id: '${ORG}'}}\n"
            "service: {pipelines: {p: {receivers: [spool], exporters: [ledger]}}}\n",
        )
    )
    assert cfg.exporters["ledger"].org_id == "acme\nexporters: {}"


def test_every_problem_is_listed(tmp_path: Path) -> None:
    found = problems(
        write(
            tmp_path,
            "receivers: {spool: {poll_interval_millis: -1}, http/public: {endpoint: 'nowhere'}}\n"
            "processors: {batch: {max_measurements: 5000}}\n"
            "exporters: {m3ter: {org_id: o}}\n"
            "extra: 1\n"
            "service: {pipelines: {a: {receivers: [spool, kafka], processors: [batch], exporters: [m3ter]}}}\n",
        )
    )
    text = "\n".join(found)
    assert "unknown top-level key 'extra'" in text
    assert "receivers.spool.poll_interval_millis" in text
    assert "receivers.http/public.endpoint: endpoint must be host:port" in text
    assert "processors.batch.max_measurements" in text
    assert "give token, or client_id and client_secret" in text
    assert "'kafka' is not defined under receivers" in text


def test_an_exporter_belongs_to_one_pipeline(tmp_path: Path) -> None:
    found = problems(
        write(
            tmp_path,
            "receivers: {spool: {}}\nexporters: {file: {path: x}}\n"
            "service: {pipelines: {a: {receivers: [spool], exporters: [file]},"
            " b: {receivers: [spool], exporters: [file]}}}\n",
        )
    )
    assert any("exporter 'file' is in pipelines 'a' and 'b'" in p for p in found), found


def test_simple_config_defaults_to_the_embedded_ledger(tmp_path: Path) -> None:
    cfg = simple_config(spool_dir=tmp_path / "s", state_dir=tmp_path / "state")
    assert cfg.pipeline.exporters == ["ledger"]
    cfg = simple_config(to="http://127.0.0.1:8765", token="t")
    assert cfg.pipeline.exporters == ["m3ter"]


def test_dead_letters_are_kept_once_until_replayed(tmp_path: Path) -> None:
    from meterkit_agent.pipeline.deadletters import DeadLetters

    dead = DeadLetters(tmp_path)
    bad = {"uid": "u1", "meter": "m", "account": "a"}
    dead.add("agent", [(bad, "invalid:x", "d")])
    dead.add("agent", [(bad, "invalid:x", "d")])  # the same batch, replayed after a crash
    assert len(dead.rows()) == 1
    dead.mark_replayed([dead.rows()[0]["id"]])
    dead.add("agent", [(bad, "invalid:x", "d")])  # replayed and refused again: a new letter
    assert len(dead.rows()) == 1 and len(dead.rows(include_replayed=True)) == 2
    dead.close()


def test_config_refuses_anchors_aliases_and_repeated_keys_with_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("receivers:\n  spool: {}\n  spool: {}\nbomb: &a [1, 2]\nmore: [*a, *a]\n")
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}:3: key 'spool' is repeated (first on line 2); a key may appear once  [duplicate_key]",
        f"{path}:4: anchors and aliases are not allowed in a catalog  [yaml_alias]",
        f"{path}:5: anchors and aliases are not allowed in a catalog  [yaml_alias]",
    ]


def test_the_fan_out_example_has_two_destinations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M3TER_CLIENT_ID", "id")
    monkeypatch.setenv("M3TER_CLIENT_SECRET", "s3cr3t-value")
    cfg = load_config(EXAMPLES / "agent-fanout.yaml")
    assert cfg.destinations == [("usage", "m3ter"), ("usage", "ledger")]
    assert cfg.service.spool_retention_hours == 168
