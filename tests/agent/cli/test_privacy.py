"""``meterkit privacy erase`` and ``retain`` end to end: a real agent delivers to a real
ledger (started with plans), the subject is erased by the command, and then every usage
answer and bill is byte-identical, reconcile passes, the agent journals the erasure, and
the raw value is in no file: not the ledger's database, the spool, the journal or a log."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import meterkit
from meterkit._pseudonyms import Key, Keyring
from meterkit_agent.audit.journal import expand_uids
from tests.agent.audit.conftest import ORG, Scenario
from tests.agent.conftest import TOKEN, cli_cmd, start_ledger, wait_for
from tests.conftest import CATALOG

SECRET = "s" * 40
KEYS = Keyring([Key("k1", SECRET.encode())])
SUBJECT = "ann.subject@example.com"
PSEUDONYM = KEYS.pseudonyms_of(SUBJECT)[0]
PLANS = """\
currency: USD
plans:
  - code: p
    bill_period: month
    pricing:
      - aggregation: {meter: data_downloaded, field: bytes, function: SUM}
        bands: [{lower_limit: 0, unit_price: "0.01"}]
      - aggregation: {meter: data_downloaded, field: user, function: UNIQUE}
        bands: [{lower_limit: 0, unit_price: "5"}]
accounts:
  acme: [{plan: p, from: "2020-01-01"}]
"""


def env() -> dict[str, str]:
    return {**os.environ, "METERKIT_LEDGER_TOKEN": TOKEN, "METERKIT_PSEUDONYMIZATION_KEY": f"k1:{SECRET}"}


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("privacy")
    s = Scenario(tmp)
    old = s.ledger.url
    s.ledger.proc.kill()
    (tmp / "plans.yaml").write_text(PLANS)
    s.ledger = start_ledger(tmp / "ledger", extra=("--catalog", str(CATALOG), "--plans", str(tmp / "plans.yaml")))
    s.config.write_text(s.config.read_text().replace(old, s.ledger.url))
    client = meterkit.Client(spool_dir=s.spool, flush_interval_millis=20, max_batch_size=50)
    for i in range(120):
        # the subject pseudonymized, and (recorded before pseudonymization) as the raw value
        user = [PSEUDONYM, "u1", SUBJECT, KEYS.pseudonyms_of("bob")[0]][i % 4]
        client.record(
            "data_downloaded", account="acme" if i % 3 else "globex", measure={"bytes": i}, who={"user": user}
        )
    assert client.shutdown(10)
    s.deliver(120)
    yield s
    s.close()


def answers(s: Scenario) -> list[bytes]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    out = []
    for params in (
        {"aggregation": "SUM", "field": "bytes", "bucket": "hour"},
        {"aggregation": "UNIQUE", "field": "user", "bucket": "day"},
        {"aggregation": "UNIQUE", "field": "user", "groupBy": "region"},  # from the measurements themselves
        {"aggregation": "COUNT", "bucket": "hour"},
    ):
        r = requests.get(f"{s.ledger.url}/organizations/{ORG}/usage", params={"meter": "data_downloaded", **params}, headers=headers, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        out.append(r.content)
    bills = {"account": "acme", "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
    r = requests.get(f"{s.ledger.url}/organizations/{ORG}/bills", params=bills, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return [*out, r.content]


def privacy(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_cmd("privacy", *args), input=stdin, capture_output=True, text=True, env=env(), timeout=120, check=False
    )


def every_file(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file():
            yield path


def test_erase_keeps_the_books_and_leaves_no_raw_value(flow: Scenario) -> None:
    s = flow
    before = answers(s)
    assert s.reconcile()[0] == 0
    common = ("--url", s.ledger.url, "--org", ORG, "--spool-dir", str(s.spool))
    dry = privacy("erase", "--subject", "-", "--reason", "GDPR art. 17 request #12", *common, "--dry-run", "--json", stdin=SUBJECT + "\n")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    found = json.loads(dry.stdout)
    assert found["rows"] == 60 and found["dryRun"] and found["journaled_to"] is None
    assert not list(s.spool.glob("*.mks"))  # a dry run journals nothing

    done = privacy("erase", "--subject", "-", "--reason", "GDPR art. 17 request #12", *common, stdin=SUBJECT + "\n")
    assert done.returncode == 0, done.stderr
    assert "erased the subject" in done.stdout and "erase them there too" in done.stdout
    assert sorted(line.strip() for line in done.stdout.splitlines() if line.startswith("  ")) == sorted(found["uids"])
    assert SUBJECT not in done.stdout + done.stderr

    s.start_agent()  # the agent journals the control record
    wait_for(lambda: any(e["type"] == "erasure" for e in s.entries()), timeout=30, what="erasure journaled")
    s.stop_agent()
    erasure = next(e for e in s.entries() if e["type"] == "erasure")
    assert erasure["subject_hash"] == PSEUDONYM and erasure["reason"] == "GDPR art. 17 request #12"
    assert sorted(expand_uids(erasure["uids"])) == sorted(found["uids"])

    assert answers(s) == before  # every usage answer and the bill, byte for byte
    code, report, err = s.reconcile()
    assert code == 0, (report, err)

    again = privacy("erase", "--subject", SUBJECT, "--reason", "again", *common, "--dry-run", "--json")
    assert json.loads(again.stdout)["rows"] == 0  # nothing of the subject is left

    raw, hashed = SUBJECT.encode(), hashlib.sha256(SUBJECT.encode()).hexdigest().encode()
    # (segments the agent retains, under state/retained, hold what the application wrote:
    # here the raw value, recorded before pseudonymization; docs/privacy.md says what reaches them)
    kept = [p for p in every_file(s.state) if "retained" not in p.parts]
    for path in [*every_file(s.tmp / "ledger"), *every_file(s.spool), *kept, *s.tmp.glob("*.log")]:
        data = path.read_bytes()
        assert raw not in data and hashed not in data, path
        if path.name not in ("journal.jsonl", "checkpoint.json") and path.parent != s.spool:
            assert PSEUDONYM.encode() not in data, path  # the journal names the subject by its pseudonym only


def test_retention_passes_are_idempotent_and_journaled(flow: Scenario, tmp_path: Path) -> None:
    s = flow
    before = answers(s)
    policy = tmp_path / "retention.yaml"
    policy.write_text("retention: {per_person_days: 0, billing_years: 7}\n")
    common = ("--url", s.ledger.url, "--org", ORG, "--spool-dir", str(s.spool), "--json")
    first = privacy("retain", "--retention", str(policy), *common)
    assert first.returncode == 0, first.stderr
    # per_person_days 0 ages whole months before this one: the measurements were recorded now
    assert json.loads(first.stdout)["deleted"] == 0
    second = privacy("retain", "--per-person-days", "0", "--billing-years", "7", *common)
    assert json.loads(second.stdout)["rows"] == 0 and answers(s) == before
    s.start_agent()
    wait_for(lambda: sum(e["type"] == "retention" for e in s.entries()) == 2, timeout=30, what="journaled")
    s.stop_agent()
    assert s.reconcile()[0] == 0
    bad = privacy("retain", "--url", s.ledger.url, "--org", ORG, "--per-person-days", "3")
    assert bad.returncode == 2 and "billing_years" in bad.stderr


def test_report_needs_what_it_reports_on(tmp_path: Path) -> None:
    done = subprocess.run(cli_cmd("privacy", "report", "--catalog", str(tmp_path / "none.yaml"), "--config", "x"), capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2 and "cannot read" in done.stderr
