"""The transparency report (``meterkit privacy report``): every meter and field with its
category, purpose, protection, retention and destinations, as a self-contained HTML page
(rendered in headless Chromium, as the reconciliation report is) and as Markdown; nothing
secret from the agent's configuration appears in either."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.agent.conftest import cli_cmd

CATALOG = """\
meters:
  - code: api_calls
    name: API calls
    description: Bills each customer for the API calls its users make.
    pii: reject
    data_fields:
      - {code: calls, name: Calls, category: MEASURE, description: The number of calls billed.}
      - {code: user, name: User, category: WHO, privacy: pseudonymize, description: "Who called, for per-seat pricing."}
      - {code: email, name: E-mail, category: WHO, privacy: drop}
      - {code: endpoint, name: Endpoint, category: WHAT}
"""
CONFIG = """\
receivers: {spool: {directory: /tmp/nowhere-spool}}
processors: {validate: {}, batch: {}}
exporters:
  m3ter: {base_url: "https://alice:hunter2@ingest.example.net", org_id: acme-org, token: sekrit-token-123}
  ledger: {}
service: {pipelines: {usage: {receivers: [spool], processors: [validate, batch], exporters: [m3ter, ledger]}}}
"""


def test_the_report_says_what_is_collected_why_and_where_it_goes(tmp_path: Path) -> None:
    (tmp_path / "meters.yaml").write_text(CATALOG)
    (tmp_path / "agent.yaml").write_text(CONFIG)
    page, markdown = tmp_path / "report.html", tmp_path / "report.md"
    done = subprocess.run(
        cli_cmd("privacy", "report", "--catalog", str(tmp_path / "meters.yaml"), "--config", str(tmp_path / "agent.yaml"),
                "--out", str(page), "--markdown", str(markdown), "--per-person-days", "90", "--billing-years", "10"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    html, md = page.read_text(), markdown.read_text()
    for text in (html, md):
        assert "Bills each customer for the API calls its users make." in text
        assert "Who called, for per-seat pricing." in text and "pseudonymized" in text
        assert "dropped in the application" in text and "reject" in text
        assert "m3ter at ingest.example.net" in text and "embedded meterkit ledger" in text
        assert "90 days" in text and "10 years" in text
        for secret in ("hunter2", "alice", "sekrit-token-123"):
            assert secret not in text
    assert "<script" not in html and "http" not in html.split("<body>")[1]  # self-contained
    assert "| email (E-mail) | WHO |" in md and "| never stored | nowhere |" in md

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    rendered = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chrome'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr[-500:]
    dom = rendered.stdout
    assert dom.count("<table>") == 1 and dom.count("<tr>") == 5  # one meter, a header and four fields
    assert "Who called, for per-seat pricing." in dom and "m3ter at ingest.example.net" in dom
