"""One ledger for the console's tests: filled with the demo's workload by a first ledger
process, then served by a second with plans (bills, caps) and signals (drops and spikes,
judged when it starts), as ``meterkit ledger serve`` runs in production."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.agent.conftest import TOKEN, LedgerServer, start_ledger, wait_for
from tests.agent.console.workload import corrected, demo_requests, trend_history

ROOT = Path(__file__).resolve().parents[3]
#: the demo's catalog, its downloads' user pseudonymized (as a real catalog says), and a
#: meter nothing uses (the Meters page shows it standing out)
CATALOG_TEXT = (
    (ROOT / "examples" / "meters.yaml")
    .read_text()
    .replace('privacy: keep, description: "Who downloaded', 'privacy: pseudonymize, description: "Who downloaded')
    .replace(
        "\nspan_rules:",
        "\n  - {code: exports, name: Report exports, data_fields: [{code: rows, name: Rows, category: MEASURE}]}\nspan_rules:",
    )
)
JOURNAL = "0123456789abcdef0123456789abcdef"
JOURNAL_HEAD = "42:" + "ab" * 32
ORG = "demo"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLANS = """
currency: USD
plans:
  - code: growth
    bill_period: month
    standing_charge: "20.00"
    pricing:
      - aggregation: {meter: api_calls, field: calls, function: SUM}
        cumulative: true
        bands: [{lower_limit: 0, unit_price: "0"}, {lower_limit: 50, unit_price: "0.10"}, {lower_limit: 100, unit_price: "0.05"}]
      - aggregation: {meter: data_downloaded, field: mib, function: SUM}
        bands: [{lower_limit: 0, unit_price: "0.013"}]
    limits:
      - {meter: api_calls, cap: 400, period: month, mode: hard}
      - {meter: data_downloaded, field: bytes, cap: 1073741824, period: month, mode: soft}
    thresholds: [80, 100]
accounts:
  acme: [{plan: growth, from: "2026-01-01T00:00:00Z"}]
  globex: [{plan: growth, from: "2026-01-01T00:00:00Z"}]
  initech: [{plan: growth, from: "2026-01-01T00:00:00Z"}]
  umbrella: [{plan: growth, from: "2026-01-01T00:00:00Z"}]
"""
SIGNALS = """
trends: {bucket: hour, window: 3, factor: 3}
sweep_interval_millis: 600000
"""


def send(url: str, measurements: list[dict[str, object]]) -> None:
    """In requests of 1,000, as an agent delivers, each carrying its journal's head."""
    headers = {**AUTH, "X-Meterkit-Journal": JOURNAL, "X-Meterkit-Journal-Head": JOURNAL_HEAD}
    for i in range(0, len(measurements), 1000):
        r = requests.post(
            f"{url}/organizations/{ORG}/measurements", json={"measurements": measurements[i : i + 1000]},
            headers=headers, timeout=60,
        )  # fmt: skip
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerServer]:
    folder = tmp_path_factory.mktemp("console")
    (folder / "plans.yaml").write_text(PLANS)
    (folder / "signals.yaml").write_text(SIGNALS)
    catalog = folder / "meters.yaml"
    catalog.write_text(CATALOG_TEXT)
    now_ms = time.time_ns() // 1_000_000
    filler = start_ledger(folder / "fill", f"sqlite:///{folder / 'ledger.db'}", ("--catalog", str(catalog)))
    try:
        workload = demo_requests(300, now_ms, pseudonymize=True)
        send(filler.url, workload + trend_history(now_ms))
        send(filler.url, [corrected(workload)])
    finally:
        filler.proc.kill(signal.SIGTERM)
    extra = (
        "--catalog",
        str(catalog),
        "--plans",
        str(folder / "plans.yaml"),
        "--signals",
        str(folder / "signals.yaml"),
    )
    server = start_ledger(folder / "serve", f"sqlite:///{folder / 'ledger.db'}", extra)

    def judged() -> bool:
        kinds = {n["type"] for n in server.get(f"/organizations/{ORG}/notifications")["notifications"]}
        return {"usage_spike", "usage_drop"} <= kinds

    try:
        wait_for(judged, what="the trend sweep")
        yield server
    finally:
        server.proc.kill(signal.SIGTERM)
