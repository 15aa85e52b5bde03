"""``meterkit correct`` and ``meterkit backfill revert``, run as a user runs them: real
processes, a real ledger process where its API has what the command reads, and the spool
read back to check exactly what was written, control records included.

A ledger that already has corrections (``corrected`` on a measurement, the batch listing)
is played by :class:`FakeLedger`, a local HTTP server that answers with the shapes of the
corrections contract; it also records what the commands asked."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests

import meterkit
from meterkit._corrections import replacement, replacement_uid, reversal, reversal_uid
from meterkit._spool import segments
from tests.agent.conftest import TOKEN, LedgerServer, cli_cmd, start_ledger, wait_for
from tests.agent.ledger.conftest import AUTH
from tests.conftest import CATALOG
from tests.sdk.helpers import controls, spooled


def run(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERKIT_")}
    if token is not None:
        env["METERKIT_LEDGER_TOKEN"] = token
    return subprocess.run(cli_cmd(*args), capture_output=True, text=True, timeout=120, env=env, check=False)


def original(uid: str, calls: int = 3, **extra: Any) -> dict[str, Any]:
    return {
        "uid": uid,
        "meter": "api_calls",
        "account": "acme",
        "ts": "2026-01-05T10:00:00.000Z",
        "what": {"endpoint": "/search"},
        "measure": {"calls": calls, "seconds": 0.1},
        **extra,
    }


def spool_bytes(spool: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in segments(spool)}


# -- a real ledger process -----------------------------------------------------------------


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerServer]:
    server = start_ledger(tmp_path_factory.mktemp("correct-ledger"))
    body = {"measurements": [original("u-1"), original("u-2", calls=7), original("b-1", batch="bf-test")]}
    r = requests.post(f"{server.url}/organizations/o/measurements", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    yield server
    server.proc.kill()


def correct(server: str, spool: Path, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    base = ("correct", "--url", server, "--org", "o", "--catalog", str(CATALOG), "--spool-dir", str(spool))
    return run(*base, *args, token=token)


def test_amend_writes_the_reversal_the_replacement_and_who_why(ledger: LedgerServer, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    done = correct(ledger.url, spool, "--uid", "u-1", "--set", "measure.calls=2", "--reason", "double counted")
    assert done.returncode == 0, done.stderr
    assert reversal_uid("u-1") in done.stdout and replacement_uid("u-1") in done.stdout
    assert TOKEN not in done.stdout + done.stderr
    expected = [reversal(original("u-1")), replacement(original("u-1"), {"measure.calls": 2})]
    assert spooled(spool) == expected
    assert expected[0]["measure"] == {"calls": -3, "seconds": -0.1}
    [control] = controls(spool, "correction")
    assert control["action"] == "amend" and control["reason"] == "double counted"
    assert control["of"] == ["u-1"] and control["uids"] == [reversal_uid("u-1"), replacement_uid("u-1")]
    assert "@" in control["by"] and control["at"].endswith("Z") and "batch" not in control
    [tally] = controls(spool, "tally")
    assert tally["entries"][0]["sums"] == {"measure.calls": -1, "measure.seconds": 0.0}

    before = spool_bytes(spool)
    again = correct(ledger.url, spool, "--uid", "u-1", "--set", "measure.calls=2", "--reason", "double counted")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    other = correct(ledger.url, spool, "--uid", "u-1", "--cancel", "--reason", "changed my mind")
    assert other.returncode == 2 and "not yet delivered" in other.stderr
    assert spool_bytes(spool) == before  # neither wrote a byte


def test_cancel_from_an_original_file_and_json_output(tmp_path: Path) -> None:
    spool, source = tmp_path / "spool", tmp_path / "u-9.json"
    source.write_text(json.dumps(original("u-9", income={"fee": 1.25})))
    args = ("correct", "--uid", "u-9", "--cancel", "--reason", "test traffic", "--original", str(source))
    done = run(*args, "--spool-dir", str(spool), "--json", token=None)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    [expected] = [reversal(original("u-9", income={"fee": 1.25}))]
    assert expected["income"] == {"fee": -1.25}
    assert answer["measurements"] == [expected] == spooled(spool)
    assert answer["controls"] == controls(spool, "correction")
    assert answer["controls"][0]["action"] == "cancel" and answer["controls"][0]["uids"] == [expected["uid"]]


def test_dry_run_writes_nothing(ledger: LedgerServer, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    done = correct(ledger.url, spool, "--uid", "u-2", "--set", "measure.calls=", "--reason", "r", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["dry_run"] is True
    assert [m["measure"] for m in answer["measurements"]] == [{"calls": -7, "seconds": -0.1}, {"seconds": 0.1}]
    assert answer["controls"][0]["uids"] == [reversal_uid("u-2"), replacement_uid("u-2")]
    assert not spool.exists()


def test_setting_what_it_already_says_is_nothing_to_do(ledger: LedgerServer, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    done = correct(ledger.url, spool, "--uid", "u-2", "--set", "measure.calls=7", "--reason", "r")
    assert done.returncode == 0 and "nothing to do" in done.stdout
    assert not spool.exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--uid", "u-1", "--cancel"), "--reason"),
        (("--uid", "u-1", "--cancel", "--reason", "  "), "--reason must say why"),
        (("--uid", "nope", "--cancel", "--reason", "r"), "no measurement 'nope'"),
        (
            ("--uid", "u-1", "--set", "measure.bytez=1", "--reason", "r"),
            "--set measure.bytez: meter 'api_calls' has no",
        ),
        (("--uid", "u-1", "--set", "where.region=eu", "--reason", "r"), "--set where.region"),
        (("--uid", "u-1", "--set", "bogus.x=1", "--reason", "r"), "'bogus' is not a category"),
        (("--uid", "u-1", "--set", "measure.calls=lots", "--reason", "r"), "measure.calls=lots: not a number"),
        (("--uid", "u-1", "--set", "measure.calls=nan", "--reason", "r"), "not a number"),
        (("--uid", "u-1", "--set", "measure.calls=1e999", "--reason", "r"), "out of range"),
        (("--uid", "u-1", "--set", "calls=1", "--reason", "r"), "expected category.code=value"),
        (("--uid", "u-1", "--reason", "r"), "exactly one of --cancel or --set"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(
    ledger: LedgerServer, tmp_path: Path, args: tuple[str, ...], named: str
) -> None:
    spool = tmp_path / "spool"
    done = correct(ledger.url, spool, *args)
    assert done.returncode == 2, done.stdout
    assert named in done.stderr and "Traceback" not in done.stderr
    assert not spool.exists()


def test_a_refused_token_is_named_but_never_printed(ledger: LedgerServer, tmp_path: Path) -> None:
    done = correct(ledger.url, tmp_path / "s", "--uid", "u-1", "--cancel", "--reason", "r", token="wrong-secret-77")
    assert done.returncode == 2 and "METERKIT_LEDGER_TOKEN" in done.stderr
    assert "wrong-secret-77" not in done.stdout + done.stderr


def test_backfill_stamps_a_batch_id_that_a_rerun_repeats(tmp_path: Path) -> None:
    source, spool = tmp_path / "history.jsonl", tmp_path / "spool"
    source.write_text('{"account": "acme", "ts": "2025-01-01T00:00:00Z", "measure": {"calls": 1}}\n')
    batch = "bf-" + hashlib.sha256(b"api_calls\0" + source.read_bytes()).hexdigest()[:16]
    first = run("backfill", str(source), "--meter", "api_calls", "--spool-dir", str(spool))
    second = run("backfill", "load", str(source), "--meter", "api_calls", "--spool-dir", str(spool))
    assert first.returncode == second.returncode == 0, first.stderr
    assert f"batch {batch}" in first.stdout and f"batch {batch}" in second.stdout
    got = spooled(spool)
    assert len(got) == 2 and got[0] == got[1] and got[0]["batch"] == batch
    named = run("backfill", str(source), "--meter", "api_calls", "--spool-dir", str(spool), "--batch", "import-7")
    assert named.returncode == 0 and spooled(spool)[-1]["batch"] == "import-7"
    bad = run("backfill", str(source), "--meter", "api_calls", "--spool-dir", str(spool), "--batch", " x")
    assert bad.returncode == 2 and "--batch" in bad.stderr and len(spooled(spool)) == 3


def test_revert_against_the_ledger_process(ledger: LedgerServer, tmp_path: Path) -> None:
    listing = requests.get(
        f"{ledger.url}/organizations/o/measurements", params={"batch": "bf-test"}, headers=AUTH, timeout=30
    )
    if listing.status_code != 200:
        pytest.skip(f"this ledger does not list a batch yet ({listing.status_code}); FakeLedger covers revert")
    spool = tmp_path / "spool"
    args = ("backfill", "revert", "bf-test", "--reason", "bad import", "--url", ledger.url, "--org", "o")
    done = run(*args, "--spool-dir", str(spool))
    assert done.returncode == 0, done.stderr
    assert spooled(spool) == [reversal(original("b-1", batch="bf-test"))]


def deliver(server: LedgerServer, org: str, spool: Path) -> None:
    """What the agent's ledger exporter does with the spool, in one request."""
    body = {"measurements": spooled(spool)}
    r = requests.post(f"{server.url}/organizations/{org}/measurements", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text


def test_corrections_delivered_to_the_ledger_chain_and_revert(ledger: LedgerServer, tmp_path: Path) -> None:
    """Amend, deliver, amend again (the ledger's chain is followed), revert the batch,
    deliver: the batch's usage is gone, and a second revert has nothing to do."""
    org = "chain"
    stored = [original("c-1", batch="bf-chain"), original("c-2", calls=5, batch="bf-chain")]
    deliver_body = {"measurements": stored}
    r = requests.post(f"{ledger.url}/organizations/{org}/measurements", json=deliver_body, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    base = ("--url", ledger.url, "--org", org, "--catalog", str(CATALOG))
    spools = [tmp_path / f"spool{i}" for i in range(4)]
    first = run(
        "correct", *base, "--uid", "c-1", "--set", "measure.calls=4", "--reason", "r", "--spool-dir", str(spools[0])
    )
    assert first.returncode == 0, first.stderr
    deliver(ledger, org, spools[0])
    second = run(
        "correct", *base, "--uid", "c-1", "--set", "measure.calls=6", "--reason", "r", "--spool-dir", str(spools[1])
    )
    assert second.returncode == 0, second.stderr
    p = replacement({k: v for k, v in stored[0].items() if k != "batch"}, {"measure.calls": 4})
    assert spooled(spools[1]) == amended(p, 6)
    deliver(ledger, org, spools[1])
    revert_args = ("backfill", "revert", "bf-chain", "--reason", "wrong file", *base)
    done = run(*revert_args, "--spool-dir", str(spools[2]))
    assert done.returncode == 0, done.stderr
    assert spooled(spools[2]) == [reversal(replacement(p, {"measure.calls": 6})), reversal(stored[1])]
    deliver(ledger, org, spools[2])
    usage = ledger.get(f"/organizations/{org}/usage", meter="api_calls", field="calls")
    assert [row["value"] for row in usage["data"]] in ([], [0])
    again = run(*revert_args, "--spool-dir", str(spools[3]))
    assert again.returncode == 0 and "reversal of 0 measurement(s); 2 already reversed" in again.stdout
    assert not spools[3].exists()


# -- a ledger with corrections already stored ----------------------------------------------


class FakeLedger:
    """Answers ``GET .../measurements/{uid}`` (with ``corrected``) and the paged batch
    listing from ``stored``, as the corrections contract (§4) says the ledger does."""

    def __init__(self, stored: list[dict[str, Any]], page: int = 3, listing_has_state: bool = True) -> None:
        self.docs = {m["uid"]: m for m in stored}
        self.page, self.listing_has_state = page, listing_has_state
        self.asked: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.asked.append(self.path)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self.answer(401, {"message": "bad token"})
                url = urlsplit(self.path)
                parts = url.path.split("/")
                if len(parts) == 5:
                    doc = fake.with_state(unquote(parts[4]))
                    return self.answer(200, doc) if doc else self.answer(404, {"message": "no such uid"})
                return self.answer(200, fake.listing({k: v[0] for k, v in parse_qs(url.query).items()}))

            def answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def with_state(self, uid: str) -> dict[str, Any] | None:
        doc = self.docs.get(uid)
        if doc is None:
            return None
        state = {
            "reversed_by": reversal_uid(uid) if reversal_uid(uid) in self.docs else None,
            "replaced_by": replacement_uid(uid) if replacement_uid(uid) in self.docs else None,
        }
        return {**doc, "corrected": state}

    def listing(self, query: dict[str, str]) -> dict[str, Any]:
        uids = sorted(
            u for u, m in self.docs.items() if m.get("batch") == query["batch"] and u > query.get("after", "")
        )
        page = uids[: min(int(query["limit"]), self.page)]
        docs = [self.with_state(u) if self.listing_has_state else self.docs[u] for u in page]
        return {"measurements": docs, "next": page[-1] if len(uids) > len(page) else None}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def amended(m: dict[str, Any], calls: int) -> list[dict[str, Any]]:
    return [reversal(m), replacement(m, {"measure.calls": calls})]


def test_amending_an_amended_measurement_corrects_its_live_replacement(tmp_path: Path) -> None:
    u = original("u-1")
    first = amended(u, 4)
    fake = FakeLedger([u, *first])
    try:
        spool = tmp_path / "spool"
        done = correct(fake.url, spool, "--uid", "u-1", "--set", "measure.calls=5", "--reason", "again")
        assert done.returncode == 0, done.stderr
        live = first[1]
        assert spooled(spool) == amended(live, 5)
        assert [m["uid"] for m in spooled(spool)] == [reversal_uid(live["uid"]), replacement_uid(live["uid"])]
        assert controls(spool, "correction")[0]["of"] == [live["uid"]]
    finally:
        fake.close()


def test_a_cancelled_measurement_is_not_corrected_again(tmp_path: Path) -> None:
    u = original("u-1")
    fake = FakeLedger([u, reversal(u)])
    try:
        spool = tmp_path / "spool"
        cancel = correct(fake.url, spool, "--uid", "u-1", "--cancel", "--reason", "r")
        assert cancel.returncode == 0 and "already cancelled" in cancel.stdout
        amend = correct(fake.url, spool, "--uid", "u-1", "--set", "measure.calls=1", "--reason", "r")
        assert amend.returncode == 2 and "cancelled" in amend.stderr
        reversed_ = correct(fake.url, spool, "--uid", reversal_uid("u-1"), "--cancel", "--reason", "r")
        assert reversed_.returncode == 2 and "is a reversal" in reversed_.stderr
        assert not spool.exists()
    finally:
        fake.close()


def revert(fake: FakeLedger, spool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    base = ("backfill", "revert", "bf-1", "--url", fake.url, "--org", "o", "--spool-dir", str(spool))
    return run(*base, "--catalog", str(CATALOG), *args)


@pytest.mark.parametrize("listing_has_state", [True, False])
def test_revert_reverses_each_live_version_once_and_twice_the_same(tmp_path: Path, listing_has_state: bool) -> None:
    batch = [original(f"b-{i}", calls=i + 1, batch="bf-1") for i in range(7)]
    stored = [*batch, original("other", batch="bf-2"), *amended(batch[3], 40), reversal(batch[5])]
    fake = FakeLedger(stored, page=3, listing_has_state=listing_has_state)
    try:
        first, second = tmp_path / "one", tmp_path / "two"
        done = revert(fake, first, "--reason", "wrong file")
        assert done.returncode == 0, done.stderr
        assert "reversal of 6 measurement(s); 1 already reversed" in done.stdout
        live = [*batch[:3], replacement(batch[3], {"measure.calls": 40}), batch[4], batch[6]]
        assert spooled(first) == [reversal(m) for m in live]
        [control] = controls(first, "correction")
        assert control["action"] == "revert" and control["batch"] == "bf-1" and control["reason"] == "wrong file"
        assert control["of"] == [m["uid"] for m in live] and control["uids"] == [reversal_uid(m["uid"]) for m in live]
        assert sum(1 for p in fake.asked if "batch=bf-1" in p) == 3  # 7 measurements, pages of 3
        assert revert(fake, second, "--reason", "wrong file").returncode == 0
        assert spooled(second) == spooled(first)
        assert controls(second, "correction")[0]["id"] == control["id"]
    finally:
        fake.close()


def test_revert_dry_run_and_bad_input(tmp_path: Path) -> None:
    fake = FakeLedger([original("b-0", batch="bf-1")])
    try:
        spool = tmp_path / "spool"
        dry = revert(fake, spool, "--reason", "r", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        assert json.loads(dry.stdout)["reversed"] == 1 and not spool.exists()
        assert revert(fake, spool).returncode == 2  # no --reason
        unknown = run("backfill", "revert", "bf-9", "--reason", "r", "--url", fake.url, "--spool-dir", str(spool))
        assert unknown.returncode == 2 and "no measurement in batch 'bf-9'" in unknown.stderr
        assert not spool.exists()
    finally:
        fake.close()


def test_revert_splits_control_records_at_5000(tmp_path: Path) -> None:
    batch = [original(f"b-{i:05d}", batch="bf-1") for i in range(5001)]
    fake = FakeLedger(batch, page=1000)
    try:
        spool = tmp_path / "spool"
        done = revert(fake, spool, "--reason", "r")
        assert done.returncode == 0, done.stderr
        found = controls(spool, "correction")
        assert [len(c["of"]) for c in found] == [5000, 1] and [len(c["uids"]) for c in found] == [5000, 1]
        assert [u for c in found for u in c["uids"]] == [m["uid"] for m in spooled(spool)]
        assert len(spooled(spool)) == 5001
    finally:
        fake.close()


# -- bad input and backends, in process (fast): named errors, never a traceback -------------


def invoke(monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    from typer.testing import CliRunner

    from meterkit_agent.cli import app

    for name in [k for k in os.environ if k.startswith("METERKIT_")]:
        monkeypatch.delenv(name)
    return CliRunner().invoke(app, list(args))


def downloads(uid: str = "d-1", **extra: Any) -> dict[str, Any]:
    m = {"uid": uid, "meter": "data_downloaded", "account": "acme", "ts": "2026-01-05T10:00:00.000Z"}
    return {**m, "who": {"user": "ann"}, "measure": {"bytes": 1048576, "mib": 1}, **extra}


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("huge", "5000 digits: out of range for a number"),
        ("deep", "nested too deeply"),
        ("junk", "bad_correction"),
        ("empty-uid", "--uid: "),
        ("newline", "--reason holds the control character U+000A"),
        ("escape", "--reason holds the control character U+001B"),
        ("derived", "--set measure.mib: a derived field, computed from the data fields (Math.round("),
    ],
)
def test_bad_input_is_named_with_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: str, named: str) -> None:
    source, spool = tmp_path / "m.json", tmp_path / "spool"
    doc: Any = original("u-1")
    args = ["--set", "measure.calls=2"]
    reason, uid = "r", "u-1"
    if case == "huge":
        args = ["--set", "measure.calls=" + "9" * 5000]
    elif case == "deep":
        doc = None
        source.write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    elif case == "junk":
        doc = original("u-1", correction="junk")
    elif case == "empty-uid":
        uid = ""
    elif case in ("newline", "escape"):
        reason = "double counted\nINFO approved" if case == "newline" else "ok\x1b[2K"
    elif case == "derived":
        doc, uid, args = downloads(), "d-1", ["--set", "measure.mib=3"]
    if doc is not None:
        source.write_text(json.dumps(doc))
    base = ["correct", "--uid", uid, "--reason", reason, "--original", str(source), "--catalog", str(CATALOG)]
    done = invoke(monkeypatch, *base, *args, "--spool-dir", str(spool))
    assert done.exit_code == 2, done.output
    assert named in done.stderr, done.stderr  # exit 2 is the command's own: a traceback exits 1
    assert not spool.exists()


def test_an_empty_uid_is_refused_before_any_request(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeLedger([original("u-1")])
    try:
        args = ("correct", "--uid", "", "--cancel", "--reason", "r", "--url", fake.url)
        done = invoke(monkeypatch, *args, "--spool-dir", str(tmp_path / "s"))
        assert done.exit_code == 2 and "--uid" in done.stderr and fake.asked == []
    finally:
        fake.close()


def test_an_amendment_carries_the_derived_fields_the_agent_would_compute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source, spool = tmp_path / "m.json", tmp_path / "spool"
    source.write_text(json.dumps(downloads()))
    args = ("correct", "--uid", "d-1", "--set", "measure.bytes=3145728", "--reason", "r", "--original", str(source))
    done = invoke(monkeypatch, *args, "--catalog", str(CATALOG), "--spool-dir", str(spool))
    assert done.exit_code == 0, done.output
    fixed = replacement(downloads(), {"measure.bytes": 3145728, "measure.mib": 3})
    assert spooled(spool) == [reversal(downloads()), fixed]


class HtmlServer:
    """A server that answers every request 200 with an HTML page (a proxy's login page)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = b"<html><body>Sign in</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_ledger_that_answers_html_exits_1_and_its_password_is_never_printed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    html = HtmlServer()
    try:
        url = f"http://ann:hunter2-secret@127.0.0.1:{html.port}"
        for command in (
            ("correct", "--uid", "u-1", "--cancel", "--reason", "r", "--url", url),
            ("backfill", "revert", "bf-1", "--reason", "r", "--url", url),
        ):
            done = invoke(monkeypatch, *command, "--spool-dir", str(tmp_path / "s"))
            assert done.exit_code == 1, done.output
            assert f"http://127.0.0.1:{html.port} answered something that is not JSON (text/html)" in done.stderr
            assert "hunter2" not in done.output + done.stderr
    finally:
        html.close()
    closed = invoke(monkeypatch, "correct", "--uid", "u-1", "--cancel", "--reason", "r", "--url", url)
    assert closed.exit_code == 1 and "cannot reach" in closed.stderr and "hunter2" not in closed.stderr


def test_a_write_refused_part_way_says_how_much_was_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import typer

    from meterkit._spool import spool_bytes
    from meterkit_agent.cli import correcting

    monkeypatch.setattr(correcting, "MAX_UIDS_PER_CONTROL", 2)  # a group per two reversals: small writes
    pairs = [(f"b-{i}", [reversal(original(f"b-{i}"))]) for i in range(6)]
    probe = correcting.CorrectionWriter(tmp_path / "probe", None, "revert", "r")
    probe.write(pairs[:2])
    probe.close()
    one_group = spool_bytes(tmp_path / "probe")
    monkeypatch.setenv("METERKIT_MAX_SPOOL_BYTES", str(one_group * 3 // 2 + 100))  # room for one group, not two
    writer = correcting.CorrectionWriter(tmp_path / "spool", None, "revert", "r")
    try:
        with pytest.raises(typer.Exit) as stopped:
            writer.write(pairs)
    finally:
        writer.close()
    assert stopped.value.exit_code == 1
    assert len(controls(tmp_path / "spool", "correction")) == 1 == len(writer.controls)
    said = capsys.readouterr().err
    assert "1 group(s) of corrections (2 measurements, with their control records) were written" in said
    assert "nothing was written" not in said.split("the next was refused")[0]


def test_two_amends_at_once_cannot_both_write(tmp_path: Path) -> None:
    """The command looks for a pending correction and writes under the spool's lock: one
    held here while another correction is written makes the command find it, and refuse."""
    import fcntl

    from meterkit._client import write_with_control
    from meterkit._corrections import control_record
    from meterkit_agent.cli.correcting import LOCK_NAME

    spool, source = tmp_path / "spool", tmp_path / "u-1.json"
    spool.mkdir(mode=0o700)
    source.write_text(json.dumps(original("u-1")))
    fd = os.open(spool / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    args = ("correct", "--uid", "u-1", "--set", "measure.calls=2", "--reason", "r", "--original", str(source))
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERKIT_")}
    proc = subprocess.Popen(
        cli_cmd(*args, "--spool-dir", str(spool)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        inode = os.fstat(fd).st_ino
        wait_for(
            lambda: any(f":{inode} " in line and "->" in line for line in Path("/proc/locks").read_text().splitlines()),
            what="the command waiting for the lock",
        )
        other = [reversal(original("u-1")), replacement(original("u-1"), {"measure.calls": 5})]
        client = meterkit.Client(None, spool, mode="production")
        write_with_control(
            client,
            other,
            control_record("amend", "first", "t@h", "2026-01-06T00:00:00.000Z", ["u-1"], [m["uid"] for m in other]),
        )
        client.shutdown()
    finally:
        os.close(fd)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "another correction of u-1 is in the spool" in err, out + err
    assert spooled(spool) == other
