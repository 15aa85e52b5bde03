"""Derived fields, and a correction's reversal, which carries them already negated."""

from __future__ import annotations

from pathlib import Path

from meterkit._corrections import reversal
from meterkit_agent.processors.derive import DeriveConfig, derive_processor
from tests.agent.conftest import POISON_CATALOG


def test_a_reversal_keeps_the_negated_derived_values_that_cancel_the_original(tmp_path: Path) -> None:
    (tmp_path / "meters.yaml").write_text(POISON_CATALOG)
    derive = derive_processor(DeriveConfig(catalog=tmp_path / "meters.yaml"))
    job = {"uid": "j1", "meter": "jobs", "account": "acme", "ts": "2026-11-01T10:00:00.000Z", "measure": {"n": 4}}
    (original,), _ = derive([job])
    assert original["measure"] == {"n": 4, "big": 4**30, "huge": 4e300}

    (reversed_,), rejected = derive([reversal(original)])
    # big is n**30: derived again from n = -4 it would be +4**30 and never cancel the original
    assert rejected == [] and reversed_["measure"] == {"n": -4, "big": -(4**30), "huge": -4e300}
    assert {k: original["measure"][k] + reversed_["measure"][k] for k in original["measure"]} == {
        "n": 0,
        "big": 0,
        "huge": 0.0,
    }
