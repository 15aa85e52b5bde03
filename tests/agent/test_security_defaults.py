"""Secure by default (issue 14, item 7): listeners beyond loopback need a token, /health says
only "alive", the API's description needs the token, secrets come from files or the
environment, TLS certificates are verified (a private CA, mutual TLS), and no secret is
printed or logged."""

from __future__ import annotations

import datetime
import json
import logging
import re
import signal
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from fastapi.testclient import TestClient
from pydantic import ValidationError
from typer.testing import CliRunner

from meterkit_agent.balances import BalancesConfig, BalancesKeeper, SpoolWatermark
from meterkit_agent.cli import app as cli_app
from meterkit_agent.component import RetryLater
from meterkit_agent.config import ConfigFileError, parse_config
from meterkit_agent.credentials import REDACTOR, Redactor, SecretFileError, read_secret_file
from meterkit_agent.exporters.exporterhelper import IngestExporter, RetryConfig
from meterkit_agent.exporters.transport import TlsConfig
from meterkit_agent.httpserver import is_loopback
from meterkit_agent.ledger import Ledger
from meterkit_agent.ledger.api import create_app
from meterkit_agent.receivers.http import HttpReceiver, HttpReceiverConfig, create_receiver_app
from meterkit_agent.receivers.otlp import OtlpReceiverConfig, create_otlp_app
from tests.agent.conftest import TOKEN, LedgerServer, Proc, cli_cmd, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
RUNNER = CliRunner()


@pytest.fixture(autouse=True)
def _own_logging() -> Iterator[None]:
    """The commands run here in-process tell the process's redactor their secrets; the
    rest of the test session logs as it did."""
    yield
    REDACTOR.uninstall()


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def pipeline(*receivers: str) -> dict[str, Any]:
    return {"pipelines": {"u": {"receivers": list(receivers), "exporters": ["m3ter"]}}}


# -- 1. listeners beyond loopback need a token ----------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("192.168.0.7", False),
        ("ledger.internal", False),
    ],
)
def test_loopback_is_127_8_and_1_and_localhost_only(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("model", [HttpReceiverConfig, OtlpReceiverConfig])
def test_a_receiver_beyond_loopback_needs_a_token_or_says_insecure(model: type[HttpReceiverConfig]) -> None:
    with pytest.raises(ValidationError) as refused:
        model(endpoint="0.0.0.0:4319")
    message = str(refused.value)
    assert "refusing to listen on 0.0.0.0 without a token" in message
    assert "token_file" in message and "insecure_no_auth: true" in message
    assert model(endpoint="0.0.0.0:4319", token="t0ken-x").authenticated  # type: ignore[arg-type]
    assert not model(endpoint="0.0.0.0:4319", insecure_no_auth=True).authenticated
    assert not model(endpoint="127.0.0.1:4319").authenticated  # loopback: no token needed


def test_an_insecure_receiver_is_warned_about_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = HttpReceiverConfig(endpoint="0.0.0.0:4319", insecure_no_auth=True)
    with caplog.at_level(logging.WARNING, "meterkit.agent"):
        receiver = HttpReceiver(cfg, tmp_path / "spool", None, create_receiver_app)  # built, never bound
    receiver.sink.close()
    assert "listens on 0.0.0.0 WITHOUT AUTHENTICATION" in caplog.text


def test_the_config_file_names_an_open_receiver(tmp_path: Path) -> None:
    doc = {
        "receivers": {"spool": {"directory": str(tmp_path)}, "http": {"endpoint": "0.0.0.0:4319"}},
        "exporters": {"m3ter": {"org_id": "o", "token": "x"}},
        "service": pipeline("spool", "http"),
    }
    with pytest.raises(ConfigFileError) as refused:
        parse_config(doc, "agent.yaml")
    assert any(
        p.startswith("agent.yaml: receivers.http: refusing to listen on 0.0.0.0") for p in refused.value.problems
    )


def test_the_ledger_refuses_an_open_host_and_warns_when_told_to_serve_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    served: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, **kw: served.append(host))  # never binds 0.0.0.0
    monkeypatch.delenv("METERKIT_LEDGER_TOKEN", raising=False)
    base = ["ledger", "serve", "--db", f"sqlite:///{tmp_path / 'l.db'}", "--host", "0.0.0.0"]
    refused = RUNNER.invoke(cli_app, base)
    assert refused.exit_code == 2 and served == []
    assert "refusing to listen on 0.0.0.0 without a token" in refused.output
    assert "--token-file" in refused.output and "--insecure-no-auth" in refused.output
    insecure = RUNNER.invoke(cli_app, [*base, "--insecure-no-auth"])
    assert insecure.exit_code == 0 and served == ["0.0.0.0"]
    assert "WITHOUT AUTHENTICATION (--insecure-no-auth)" in insecure.output
    tokens = private(tmp_path / "token", "file-token-1\n")
    assert RUNNER.invoke(cli_app, [*base, "--token-file", str(tokens)]).exit_code == 0
    assert served == ["0.0.0.0", "0.0.0.0"]


# -- 2. /health says "alive"; the API's description needs the token ------------------------


def test_health_says_alive_only_and_the_api_description_needs_the_token(tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.ingest("o", [{"uid": "u1", "meter": "m", "account": "a", "ts": "2026-01-01T00:00:00.000Z"}])
    with TestClient(create_app(ledger, token=TOKEN)) as api:
        assert api.get("/health").json() == {"status": "ok"}  # no count, no token needed
        assert api.get("/openapi.json").status_code == 401
        assert "/organizations/{org_id}/usage" in api.get("/openapi.json", headers=auth).json()["paths"]
        assert api.get("/docs").status_code == 404 and api.get("/redoc").status_code == 404
    with TestClient(create_app(ledger)) as open_api:  # no token (loopback): as FastAPI serves them
        assert open_api.get("/openapi.json").status_code == 200 and open_api.get("/docs").status_code == 200
    for app in (create_receiver_app, create_otlp_app):
        cfg = HttpReceiverConfig(token="rcv-token-1")  # type: ignore[arg-type]
        with TestClient(app(cfg, None, None)) as receiver:  # type: ignore[arg-type]
            assert receiver.get("/health").json() == {"status": "ok"}
            assert receiver.get("/openapi.json").status_code == 401 and receiver.get("/docs").status_code == 404
            bearer = {"Authorization": "Bearer rcv-token-1"}
            assert receiver.get("/openapi.json", headers=bearer).json()["info"]["title"].startswith("meterkit agent")


# -- 3. secrets from files and the environment ----------------------------------------------


def test_a_secret_file_must_be_private(tmp_path: Path) -> None:
    shared = private(tmp_path / "shared", "s3cret-shared\n", 0o644)
    with pytest.raises(SecretFileError) as refused:
        read_secret_file(shared, "--token-file")
    assert f"chmod 600 {shared}" in str(refused.value) and "s3cret" not in str(refused.value)
    assert read_secret_file(private(tmp_path / "ok", "s3cret-ok\n"), "--token-file") == "s3cret-ok"
    with pytest.raises(SecretFileError, match="is empty"):
        read_secret_file(private(tmp_path / "empty", "\n"), "--token-file")


def test_every_secret_setting_may_come_from_a_file(tmp_path: Path) -> None:
    files = {name: private(tmp_path / name, f"{name}-value-42\n") for name in ("tok", "cs", "rcv", "db", "bal")}
    files["db"].write_text("postgresql://u:pg-pass-42@127.0.0.1/l\n")
    doc = {
        "receivers": {"spool": {"directory": str(tmp_path)}, "http": {"token_file": str(files["rcv"])}},
        "exporters": {
            "m3ter": {"org_id": "o", "token_file": str(files["tok"])},
            "m3ter/cc": {"org_id": "o", "client_id": "id", "client_secret_file": str(files["cs"])},
            "ledger": {"db_file": str(files["db"])},
        },
        "extensions": {
            "balances": {"ledger_url": "http://127.0.0.1:1", "org_id": "o", "token_file": str(files["bal"])}
        },
        "service": {**pipeline("spool", "http"), "extensions": ["balances"]},
    }
    cfg = parse_config(doc)
    assert cfg.exporters["m3ter"].token.get_secret_value() == "tok-value-42"
    assert cfg.exporters["m3ter/cc"].client_secret.get_secret_value() == "cs-value-42"
    assert cfg.exporters["ledger"].db == "postgresql://u:pg-pass-42@127.0.0.1/l"
    assert cfg.receivers["http"].token.get_secret_value() == "rcv-value-42"
    assert cfg.extensions["balances"].token.get_secret_value() == "bal-value-42"
    files["tok"].chmod(0o604)
    doc["exporters"]["m3ter/cc"]["client_secret"] = "inline"
    with pytest.raises(ConfigFileError) as refused:
        parse_config(doc, "agent.yaml")
    assert refused.value.problems == [
        f"agent.yaml: exporters.m3ter.token_file: {files['tok']} can be read or written by every user of this"
        f" machine (mode 0604); make it private first: chmod 600 {files['tok']}",
        "agent.yaml: exporters.m3ter/cc: give client_secret or client_secret_file, not both",
    ]


def test_a_token_typed_on_the_command_line_is_warned_about(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)
    base = ["ledger", "serve", "--db", f"sqlite:///{tmp_path / 'l.db'}"]
    typed = RUNNER.invoke(cli_app, [*base, "--token", "typed-token-1"])
    assert typed.exit_code == 0 and "--token on the command line is visible to every user" in typed.output
    from_env = RUNNER.invoke(cli_app, base, env={"METERKIT_LEDGER_TOKEN": "env-token-1"})
    assert from_env.exit_code == 0 and "visible" not in from_env.output
    tokens = private(tmp_path / "t", "file-token-1")
    both = RUNNER.invoke(cli_app, [*base, "--token", "typed-token-1", "--token-file", str(tokens)])
    assert both.exit_code == 2 and "give --token or --token-file, not both" in both.output
    tokens.chmod(0o644)
    shared = RUNNER.invoke(cli_app, [*base, "--token-file", str(tokens)])
    assert shared.exit_code == 2 and "chmod 600" in shared.output and "file-token-1" not in shared.output


def test_the_ledger_takes_its_token_from_a_file_and_not_from_argv(ledger: LedgerServer) -> None:
    """tests/agent/conftest.py starts every ledger with --token-file."""
    assert ledger.proc.popen is not None
    argv = Path(f"/proc/{ledger.proc.popen.pid}/cmdline").read_bytes()
    assert b"--token-file" in argv and TOKEN.encode() not in argv
    url = f"{ledger.url}/organizations/o/uids"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json() == {"uids": []}


# -- 4. TLS: verified, a private CA, mutual TLS ---------------------------------------------


class Pki:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.UTC)

        def name(cn: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def issue(cn: str, key: Any, issuer: Any, issuer_key: Any, ca: bool, extra: list[Any]) -> Any:
            builder = (
                x509.CertificateBuilder()
                .subject_name(name(cn))
                .issuer_name(issuer)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            )
            for extension in extra:
                builder = builder.add_extension(extension, critical=False)
            return builder.sign(issuer_key, hashes.SHA256())

        def write(path: Path, *pems: bytes) -> Path:
            path.write_bytes(b"".join(pems))
            path.chmod(0o600)
            return path

        def pem_key(key: Any) -> bytes:
            return bytes(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )

        ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
        ca = issue("meterkit test CA", ca_key, name("meterkit test CA"), ca_key, True, [])
        ip = __import__("ipaddress").ip_address("127.0.0.1")
        server = issue(
            "127.0.0.1",
            server_key,
            ca.subject,
            ca_key,
            False,
            [
                x509.SubjectAlternativeName([x509.IPAddress(ip)]),
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            ],
        )
        client = issue(
            "meterkit-agent",
            client_key,
            ca.subject,
            ca_key,
            False,
            [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])],
        )
        pem = serialization.Encoding.PEM
        self.ca = write(directory / "ca.pem", ca.public_bytes(pem))
        self.server_cert = write(directory / "server.pem", server.public_bytes(pem))
        self.server_key = write(directory / "server.key", pem_key(server_key))
        self.client_cert = write(directory / "client.pem", client.public_bytes(pem))
        self.client_key = write(directory / "client.key", pem_key(client_key))


class TlsServer:
    """An HTTPS server on 127.0.0.1 that answers balances and ingest, noting each client's
    certificate (None when it showed none)."""

    def __init__(self, pki: Pki) -> None:
        self.clients: list[str | None] = []
        seen = self.clients

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, doc: Any) -> None:
                peer = self.connection.getpeercert()  # type: ignore[attr-defined]
                seen.append(dict(x[0] for x in peer["subject"])["commonName"] if peer else None)
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                as_of = parse_qs(urlsplit(self.path).query)["as_of"][0]
                self._answer({"as_of": as_of, "balances": []})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self._answer({"result": "accepted"})

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        context.load_verify_locations(pki.ca)
        context.verify_mode = ssl.CERT_OPTIONAL  # a client certificate, if shown, must verify
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pki, TlsServer]]:
    pytest.importorskip("cryptography", reason="the throwaway CA is made with the cryptography package")
    pki = Pki(tmp_path_factory.mktemp("pki"))
    server = TlsServer(pki)
    yield pki, server
    server.server.shutdown()
    server.server.server_close()


def test_the_balance_keeper_verifies_the_ledger_and_shows_its_client_certificate(
    tmp_path: Path, tls_server: tuple[Pki, TlsServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    pki, server = tls_server

    def keeper(tls: dict[str, Any]) -> BalancesKeeper:
        cfg = BalancesConfig(ledger_url=server.url, org_id="o", interval_millis=100, tls=tls)  # type: ignore[arg-type]
        watermark = SpoolWatermark(lambda: [], lambda _key: 0)
        watermark.sample()  # no spools: everything is delivered up to now
        return BalancesKeeper(cfg, [tmp_path / "balances.json"], watermark, tmp_path)

    unverified = keeper({})
    assert not unverified.refresh()
    assert "SSLError" in str(unverified.last_error)
    assert not (tmp_path / "balances.json").exists()
    # A configured CA wins over the environment's bundle (which requests would prefer).
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", requests.certs.where())
    assert keeper({"ca_file": pki.ca}).refresh() and server.clients[-1] is None
    assert keeper({"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key}).refresh()
    assert server.clients[-1] == "meterkit-agent"
    assert (tmp_path / "balances.json").exists()


def test_exporters_verify_certificates_against_the_configured_ca_with_mutual_tls(
    tls_server: tuple[Pki, TlsServer],
) -> None:
    pki, server = tls_server
    record = {"uid": "u1", "meter": "m", "account": "a", "ts": "2026-01-01T00:00:00.000Z"}
    retry = RetryConfig(request_timeout_millis=5000)
    with pytest.raises(RetryLater, match="SSLError"):
        IngestExporter("plain", f"{server.url}/ingest", retry).export([record])
    tls = TlsConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    assert IngestExporter("mtls", f"{server.url}/ingest", retry, tls=tls).export([record]) == []
    assert server.clients[-1] == "meterkit-agent"


def test_tls_settings_are_checked_and_nothing_turns_verification_off(tmp_path: Path) -> None:
    key = private(tmp_path / "client.key", "not really a key", 0o644)
    with pytest.raises(ValidationError, match="key_file needs cert_file"):
        TlsConfig(key_file=private(tmp_path / "k2", "x"))
    with pytest.raises(ValidationError, match="every user of this machine"):
        TlsConfig(cert_file=private(tmp_path / "c.pem", "x"), key_file=key)
    with pytest.raises(ValidationError, match="is not a file"):
        TlsConfig(ca_file=tmp_path / "missing.pem")
    off = re.compile(r"verify\s*=\s*False|CERT_NONE|check_hostname\s*=\s*False|_create_unverified_context")
    sources = [*(ROOT / "agent" / "meterkit_agent").rglob("*.py"), *(ROOT / "sdk" / "meterkit").rglob("*.py")]
    assert [str(p) for p in sources if off.search(p.read_text())] == []


# -- 5. no secret printed or logged ---------------------------------------------------------


def test_validate_config_shows_what_it_resolved_to_without_a_secret(tmp_path: Path) -> None:
    secrets = {
        "env": "env-secret-7f3a",
        "file": "file-secret-8b2c",
        "inline": "inline-secret-9d4e",
        "cs": "client-secret-1a5f",
        "pg": "pg-password-2b6a",
    }
    private(tmp_path / "m3ter-token", secrets["file"] + "\n")
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""
receivers:
  spool: {{directory: {tmp_path / "spool"}}}
  http: {{endpoint: "127.0.0.1:4319", token: {secrets["inline"]}}}
processors: {{batch: {{}}}}
exporters:
  m3ter: {{org_id: o, token_file: {tmp_path / "m3ter-token"}}}
  m3ter/cc: {{org_id: o, client_id: me, client_secret: "${{CS}}"}}
  http: {{url: "http://127.0.0.1:1/in", headers: {{X-Api-Key: "${{KEY}}"}}}}
  ledger: {{db: "postgresql://me:{secrets["pg"]}@127.0.0.1/l"}}
service:
  pipelines: {{u: {{receivers: [spool, http], processors: [batch], exporters: [m3ter, m3ter/cc, http, ledger]}}}}
"""
    )
    done = RUNNER.invoke(
        cli_app, ["agent", "validate-config", str(config)], env={"CS": secrets["cs"], "KEY": secrets["env"]}
    )
    assert done.exit_code == 0, done.output
    assert [name for name, secret in secrets.items() if secret in done.output] == []
    assert done.output.count("'***'") == 4 and "postgresql://me:***@127.0.0.1/l" in done.output
    assert "token_file" not in done.output and "client_id: me" in done.output


def test_the_redactor_hides_secrets_in_messages_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    redactor = Redactor()
    redactor.add(["sekrit-token-55", "abc", None])  # "abc" is too short to search for
    try:
        log = logging.getLogger("meterkit.agent.test")
        with caplog.at_level(logging.INFO, "meterkit.agent.test"):
            log.info("token %s and url %s", "sekrit-token-55", "postgresql://u:pw-77@h/db")
            try:
                raise ValueError("refused sekrit-token-55")
            except ValueError:
                log.exception("failed")
        text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
        assert "sekrit-token-55" not in text and "pw-77" not in text
        assert "token *** and url postgresql://u:***@h/db" in caplog.text and "refused ***" in text
    finally:
        redactor.uninstall()


def test_the_agent_log_holds_no_secret(tmp_path: Path) -> None:
    """A real agent, with secrets inline, from the environment and from a file, talking to a
    backend that refuses it and echoes what it was sent (Authorization included)."""
    refusing = Refusing()
    receiver_token, ledger_token, m3ter_token = "rcv-tok-3c1d", "bal-tok-4e2f", "m3t-tok-5a6b"
    private(tmp_path / "receiver-token", receiver_token)
    port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""
receivers:
  spool: {{directory: {tmp_path / "spool"}, poll_interval_millis: 50}}
  http: {{endpoint: "127.0.0.1:{port}", token_file: {tmp_path / "receiver-token"}}}
processors: {{batch: {{timeout_millis: 50}}}}
exporters:
  m3ter:
    base_url: {refusing.url}
    org_id: o
    token: ${{LEDGER_TOKEN}}
    retry: {{initial_interval_millis: 50, max_interval_millis: 200}}
extensions:
  balances: {{ledger_url: {refusing.url}, org_id: o, token: {ledger_token}, interval_millis: 100}}
service:
  state_dir: {tmp_path / "state"}
  drain_timeout_millis: 500
  extensions: [balances]
  pipelines: {{u: {{receivers: [spool, http], processors: [batch], exporters: [m3ter]}}}}
"""
    )
    agent = Proc(
        cli_cmd("agent", "run", "--config", str(config), "-v"),
        tmp_path / "agent.log",
        env={"LEDGER_TOKEN": m3ter_token},
    ).start()
    log = tmp_path / "agent.log"
    try:
        wait_for(lambda: "meterkit agent started" in log.read_text() or not agent.alive(), what="agent start")
        measurement = {"uid": "u1", "meter": "m", "account": "a", "ts": "2026-01-01T00:00:00Z"}
        answer = requests.post(
            f"http://127.0.0.1:{port}/v1/measurements",
            json=[measurement],
            headers={"Authorization": f"Bearer {receiver_token}"},
            timeout=10,
        )
        assert answer.json() == {"accepted": 1}
        wait_for(lambda: "is PAUSED" in log.read_text(), what="the refused delivery to be logged")
        wait_for(lambda: "cannot refresh the balance snapshot" in log.read_text(), what="the refused refresh")
    finally:
        agent.kill(signal.SIGTERM)
        refusing.close()
    text = log.read_text()
    assert m3ter_token in refusing.echoed and ledger_token in refusing.echoed  # they were sent, and echoed back
    assert [s for s in (receiver_token, ledger_token, m3ter_token) if s in text] == []


class Refusing:
    """A backend that answers every request 401, echoing the request's headers in its body."""

    def __init__(self) -> None:
        self.echoed = ""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _refuse(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = json.dumps({"message": "refused", "you_sent": dict(self.headers)}).encode()
                outer.echoed += body.decode()
                self.send_response(401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _refuse

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
