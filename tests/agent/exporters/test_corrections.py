"""Corrections and backfills through the exporters that send measurements as they are or
nearly (m3ter, OpenMeter, ledger, HTTP, file): what each backend receives for a reversal, a
replacement and a backfilled measurement (``responses``, and a real ledger database).
Stripe, which cancels instead, is in ``test_stripe_corrections.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import responses
from pydantic import SecretStr

from meterkit._corrections import replacement, replacement_uid, reversal, reversal_uid
from meterkit_agent.exporters.exporterhelper import Serialised, idempotency_key, without_extensions
from meterkit_agent.exporters.file import FileExporter, FileExporterConfig
from meterkit_agent.exporters.http import HttpExporter, HttpExporterConfig
from meterkit_agent.exporters.ledger import LedgerExporter, LedgerExporterConfig
from meterkit_agent.exporters.m3ter import M3terExporter, M3terExporterConfig
from meterkit_agent.exporters.openmeter import OpenMeterExporter, OpenMeterExporterConfig
from tests.agent.exporters.helpers import FAST, URL, body_of, event

ORIGINAL = event("00000000-0000-4000-8000-000000000001")
REVERSAL = reversal(ORIGINAL)
REPLACEMENT = replacement(ORIGINAL, {"measure.calls": 3})
BACKFILLED = event("00000000-0000-4000-8000-000000000002", batch="backfill-2026-01")
EXTENSIONS = ("correction", "batch")


def serialised(records: list[dict[str, Any]]) -> Serialised:
    """Records as the pipeline hands them over: each with its JSON, keys sorted."""
    return Serialised(records, [orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records])


def bare(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k not in EXTENSIONS}


def m3ter(send_extensions: bool | None = False) -> M3terExporter:
    """An m3ter exporter posting to ``URL``; ``send_extensions=False`` stands for m3ter itself."""
    return M3terExporter(
        "m3ter",
        M3terExporterConfig(
            base_url="http://backend.test",
            org_id="o1",
            token=SecretStr("t0k"),
            retry=FAST,
            send_extensions=send_extensions,
        ),
    )


@pytest.mark.parametrize(
    ("base_url", "sends"),
    [
        (None, False),
        ("https://api.m3ter.com", False),
        ("https://ingest.eu.m3ter.com", False),
        ("http://127.0.0.1:8765", True),
        ("https://ledger.internal", True),
    ],
)
def test_only_m3ters_own_hosts_are_spared_the_keys_they_do_not_know(base_url: str | None, sends: bool) -> None:
    cfg = M3terExporterConfig(base_url=base_url, org_id="o1", token=SecretStr("t0k"))
    assert M3terExporter("m3ter", cfg)._send_extensions is sends


def test_a_ledger_behind_the_m3ter_exporter_gets_corrections_and_batches_as_they_are(
    http: responses.RequestsMock,
) -> None:
    http.post(URL, json={"result": "accepted"})
    records = [dict(REVERSAL), dict(REPLACEMENT), dict(BACKFILLED)]
    assert m3ter(send_extensions=None).export(records) == []
    assert body_of(http.calls[0])["measurements"] == [REVERSAL, REPLACEMENT, BACKFILLED]


# -- m3ter ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [list, serialised], ids=["records", "serialised"])
def test_m3ter_gets_the_reversal_as_negative_usage_at_the_original_time_then_the_replacement(
    shape: Any, http: responses.RequestsMock
) -> None:
    http.post(URL, json={"result": "accepted"})
    records = [dict(REVERSAL), dict(REPLACEMENT), dict(BACKFILLED)]
    assert m3ter().export(shape(records)) == []
    call = http.calls[0]
    sent = body_of(call)["measurements"]
    assert sent == [bare(REVERSAL), bare(REPLACEMENT), bare(BACKFILLED)]  # in order, unknown keys stripped
    assert sent[0]["uid"] == reversal_uid(ORIGINAL["uid"]) and sent[1]["uid"] == replacement_uid(ORIGINAL["uid"])
    assert sent[0]["ts"] == ORIGINAL["ts"]
    assert sent[0]["measure"] == {"calls": -1, "seconds": -0.25}
    assert sent[0]["what"] == ORIGINAL["what"]
    assert sent[1]["measure"] == {"calls": 3, "seconds": 0.25}
    # the request is keyed as any other: by its uids, which stripping does not change
    assert call.request.headers["Idempotency-Key"] == idempotency_key(m["uid"] for m in records)
    assert call.request.headers["Authorization"] == "Bearer t0k"
    # what the pipeline holds (spool, journal, dead letters) keeps both keys
    assert records[0]["correction"] == {"of": ORIGINAL["uid"], "kind": "reversal"}
    assert records[2]["batch"] == "backfill-2026-01"


def test_m3ter_dead_letter_names_the_pipelines_record_with_its_correction(http: responses.RequestsMock) -> None:
    """The ledger-style answer names index 1 (the reversal) as bad: the dead letter is the
    pipeline's own record (matched by identity), correction included; the rest is delivered."""
    http.post(URL, status=400, json={"errors": [{"index": 1, "reason": "bad_correction"}]})
    http.post(URL, json={"result": "accepted"})
    records = serialised([dict(ORIGINAL), dict(REVERSAL), dict(BACKFILLED)])
    rejected = m3ter().export(records)
    assert [(r.measurement["uid"], r.reason) for r in rejected] == [
        (REVERSAL["uid"], "rejected_by_backend:bad_correction")
    ]
    assert rejected[0].measurement is records[1]
    assert body_of(http.calls[1])["measurements"] == [bare(ORIGINAL), bare(BACKFILLED)]


def test_without_extensions_leaves_a_plain_batch_and_its_bytes_alone() -> None:
    records = serialised([dict(ORIGINAL), dict(event("x"))])
    plain, copied = without_extensions(records)
    assert plain is records and copied == {}
    mixed = serialised([dict(ORIGINAL), dict(REVERSAL)])
    plain, copied = without_extensions(mixed)
    assert isinstance(plain, Serialised)
    assert plain[0] is mixed[0] and plain.encoded[0] is mixed.encoded[0]  # not copied, not encoded again
    assert plain.encoded[1] == orjson.dumps(bare(REVERSAL), option=orjson.OPT_SORT_KEYS)
    assert copied == {id(plain[1]): mixed[1]}


# -- OpenMeter -----------------------------------------------------------------------------

OM_URL = "http://openmeter.test/api/v1/events"


def test_openmeter_gets_the_reversal_as_a_negated_event_at_the_original_time(http: responses.RequestsMock) -> None:
    http.post(OM_URL, status=204)
    exporter = OpenMeterExporter(
        "openmeter",
        OpenMeterExporterConfig(base_url="http://openmeter.test", source="service-0", types={"api_calls": "request"}),
    )
    assert exporter.export([ORIGINAL, REVERSAL, REPLACEMENT, BACKFILLED]) == []
    events = json.loads(http.calls[0].request.body)
    common = {"specversion": "1.0", "source": "service-0", "type": "request", "subject": "customer-1"}
    assert events == [
        {
            **common,
            "id": ORIGINAL["uid"],
            "time": ORIGINAL["ts"],
            "data": {"calls": 1, "seconds": 0.25, "route": "/hello"},
        },
        {
            **common,
            "id": reversal_uid(ORIGINAL["uid"]),
            "time": ORIGINAL["ts"],
            "data": {"calls": -1, "seconds": -0.25, "route": "/hello"},
        },
        {
            **common,
            "id": replacement_uid(ORIGINAL["uid"]),
            "time": ORIGINAL["ts"],
            "data": {"calls": 3, "seconds": 0.25, "route": "/hello"},
        },
        {
            **common,
            "id": BACKFILLED["uid"],
            "time": BACKFILLED["ts"],
            "data": {"calls": 1, "seconds": 0.25, "route": "/hello"},
        },
    ]
    # A SUM meter over "calls" nets the original out and counts the replacement.
    assert sum(e["data"]["calls"] for e in events[:3]) == REPLACEMENT["measure"]["calls"]


# -- the backends that know both keys ------------------------------------------------------


def test_the_ledger_exporter_stores_corrections_and_batches_as_they_are(tmp_path: Path) -> None:
    exporter = LedgerExporter("ledger", LedgerExporterConfig(db=f"sqlite:///{tmp_path / 'l.db'}", org_id="o"))
    try:
        assert exporter.export([dict(ORIGINAL), dict(BACKFILLED)]) == []
        assert exporter.export([dict(REVERSAL), dict(REPLACEMENT)]) == []
        for sent in (BACKFILLED, REVERSAL, REPLACEMENT):
            stored = exporter.ledger.get("o", sent["uid"])
            assert stored is not None
            assert {k: stored.get(k) for k in EXTENSIONS} == {k: sent.get(k) for k in EXTENSIONS}
        assert "correction" not in (exporter.ledger.get("o", ORIGINAL["uid"]) or {})
    finally:
        exporter.shutdown()


def test_the_ledger_exporter_dead_letters_a_reversal_the_ledger_refuses_alone(tmp_path: Path) -> None:
    exporter = LedgerExporter("ledger", LedgerExporterConfig(db=f"sqlite:///{tmp_path / 'l.db'}", org_id="o"))
    try:
        assert exporter.export([dict(ORIGINAL)]) == []
        wrong = reversal({**ORIGINAL, "account": "customer-2"})  # reverses ORIGINAL's uid, another account
        other = event("00000000-0000-4000-8000-000000000003")
        rejected = exporter.export([dict(other), wrong])
        assert [(r.measurement["uid"], r.reason) for r in rejected] == [
            (wrong["uid"], "rejected_by_backend:bad_correction")
        ]
        assert "customer-2" in rejected[0].detail and "customer-1" in rejected[0].detail
        assert exporter.ledger.get("o", other["uid"]) is not None  # the rest of the batch is stored
        assert exporter.ledger.get("o", wrong["uid"]) is None
    finally:
        exporter.shutdown()


def test_the_http_exporter_sends_corrections_and_batches_as_the_pipeline_encoded_them(
    http: responses.RequestsMock,
) -> None:
    http.post(URL, json={})
    records = serialised([dict(REVERSAL), dict(REPLACEMENT), dict(BACKFILLED)])
    assert HttpExporter("http", HttpExporterConfig(url=URL, retry=FAST)).export(records) == []
    assert body_of(http.calls[0]) == {"measurements": [REVERSAL, REPLACEMENT, BACKFILLED]}


def test_the_file_exporter_writes_corrections_and_batches(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    exporter = FileExporter("file", FileExporterConfig(path=path))
    assert exporter.export([REVERSAL, BACKFILLED]) == []
    assert [json.loads(line) for line in path.read_text().splitlines()] == [REVERSAL, BACKFILLED]
