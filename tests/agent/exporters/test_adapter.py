"""The exporters' transport adapter (:mod:`meterkit_agent.exporters.adapter`) against real
servers on 127.0.0.1: kept connections, a connection the server closed, coded answers,
``requests``' errors, and what it leaves to ``requests``' own adapter. TLS (verification,
client certificates) is :mod:`tests.agent.exporters.test_tls`'."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import pytest
import requests

from meterkit_agent.component import Misconfigured
from meterkit_agent.exporters.adapter import Adapter
from meterkit_agent.exporters.http import HttpExporter, HttpExporterConfig
from meterkit_agent.exporters.transport import session
from tests.agent.exporters.helpers import FAST, Recorder, m


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_requests_go_over_one_kept_connection_and_answers_read_as_requests_reads_them() -> None:
    server = Recorder(answer=b'{"r\xc3\xa9sultat": "accept\xc3\xa9"}', gzipped=True)
    try:
        s = session()
        answers = [s.post(f"{server.url}/a", data=b"1", timeout=5), s.get(f"{server.url}/b", timeout=5)]
        answers.append(s.post_bytes(f"{server.url}/c", b"3", {"X-Key": "k"}, timeout=5))
        for answer in answers:
            assert answer.status_code == 200 and answer.reason == "OK"
            assert answer.json() == {"résultat": "accepté"} and answer.text == '{"résultat": "accepté"}'
            assert answer.headers["content-encoding"] == "gzip" and answer.encoding == "utf-8"
            assert b"".join(answer.iter_content(4)) == answer.content
            assert answer.elapsed.total_seconds() > 0
        assert [r["method"] for r in server.seen] == ["POST", "GET", "POST"]
        assert len({r["connection"] for r in server.seen}) == 1
        assert server.seen[2]["headers"]["x-key"] == "k"
        assert server.seen[0]["headers"]["accept-encoding"] == "gzip, deflate"  # what it can decode
    finally:
        server.close()


def test_a_connection_the_server_closed_is_replaced_before_it_is_used() -> None:
    server = Recorder(hang_up=True)
    try:
        s = session()
        for i in range(3):
            assert s.post_bytes(f"{server.url}/ingest", str(i).encode(), {}, timeout=5).status_code == 200
        assert [r["body"] for r in server.seen] == [b"0", b"1", b"2"]  # each sent once
        assert len({r["connection"] for r in server.seen}) == 3
    finally:
        server.close()


def test_a_kept_connection_closed_under_a_request_is_retried_once_on_a_new_one() -> None:
    """The server reads request 1 on the kept connection and hangs up without answering
    (its close was on its way when the request went): the request goes again, once, on a
    new connection. On a new connection, the same hang-up is an error."""
    server = Recorder(unanswered=(1, 3))
    try:
        s = session()
        for body in (b"0", b"1"):
            assert s.post_bytes(f"{server.url}/ingest", body, {}, timeout=5).status_code == 200
        assert [r["body"] for r in server.seen] == [b"0", b"1", b"1"]
        assert server.seen[1]["connection"] == server.seen[0]["connection"] != server.seen[2]["connection"]
        s.close()  # no kept connection: request 3 is on a new one
        with pytest.raises(requests.ConnectionError):
            s.post_bytes(f"{server.url}/ingest", b"3", {}, timeout=5)
        assert [r["body"] for r in server.seen] == [b"0", b"1", b"1", b"3"]
    finally:
        server.close()


def test_failures_are_requests_errors() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(requests.ConnectionError):
        session().post_bytes(f"http://127.0.0.1:{port}/ingest", b"{}", {}, timeout=5)
    slow = Recorder(delay=1.0)
    try:
        with pytest.raises(requests.exceptions.ReadTimeout):
            session().post_bytes(f"{slow.url}/ingest", b"{}", {}, timeout=0.2)
    finally:
        slow.close()


def test_what_it_does_not_send_itself_goes_through_requests_own_adapter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream, a (connect, read) timeout pair, and a proxy from the environment are
    ``requests``' own adapter's; the answers are the same."""
    server = Recorder()
    own: list[str] = []
    send = requests.adapters.HTTPAdapter.send

    def counted(self: requests.adapters.HTTPAdapter, request: requests.PreparedRequest, **kw: object) -> object:
        own.append(str(request.url))
        return send(self, request, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", counted)
    try:
        s = session()
        assert s.get(f"{server.url}/plain", timeout=5).json() == {"ok": True}
        assert own == []  # sent by the exporters' adapter itself
        assert s.get(f"{server.url}/stream", stream=True, timeout=5).json() == {"ok": True}
        assert s.get(f"{server.url}/pair", timeout=(5, 5)).json() == {"ok": True}
        monkeypatch.setenv("HTTP_PROXY", server.url)
        assert s.get("http://backend.invalid/proxied", timeout=5).json() == {"ok": True}
        assert own == [f"{server.url}/stream", f"{server.url}/pair", "http://backend.invalid/proxied"]
        assert [r["target"] for r in server.seen][-1] == "http://backend.invalid/proxied"
    finally:
        server.close()


def test_closing_the_adapter_closes_its_kept_connections() -> None:
    server = Recorder()
    try:
        s = session()
        s.post_bytes(f"{server.url}/x", b"1", {}, timeout=5)
        adapter = s.get_adapter(server.url)
        assert isinstance(adapter, Adapter)
        kept = [c.sock for c in adapter._idle.values()]
        assert len(kept) == 1 and kept[0] is not None
        s.close()
        assert adapter._idle == {} and kept[0].fileno() == -1
    finally:
        server.close()


class RawServer:
    """A TCP server on 127.0.0.1 that hands each connection to ``serve`` (in a thread) and
    counts the requests it reads."""

    def __init__(self, serve: Callable[[socket.socket, RawServer], None]) -> None:
        self.requests = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.serve = serve
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            self.serve(conn, self)

    def read_head(self, conn: socket.socket) -> bytes:
        """Read a request's head (up to the blank line); count the request."""
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            head += chunk
        self.requests += 1
        return head

    def close(self) -> None:
        self.listener.close()


def test_an_answer_sent_before_the_body_was_read_is_read() -> None:
    """A server that refuses a large body from its head alone (413) and closes: the 413
    comes back (so the exporter splits the batch), not a broken pipe retried forever."""

    def refuse(conn: socket.socket, server: RawServer) -> None:
        server.read_head(conn)
        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
        conn.shutdown(socket.SHUT_WR)
        time.sleep(0.2)  # then close unread: the client's sending breaks

    server = RawServer(refuse)
    try:
        answer = session().post_bytes(f"{server.url}/ingest", b"x" * 16_000_000, {}, timeout=10)
        assert (answer.status_code, answer.text) == (413, "too big!")
    finally:
        server.close()


@pytest.mark.parametrize(
    ("second", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", requests.ConnectionError),  # cut short
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope", requests.RequestException),
        (b"garbage\r\n\r\n", requests.ConnectionError),
    ],
    ids=["short", "bad-gzip", "garbage"],
)
def test_a_request_answered_badly_on_a_kept_connection_is_never_sent_again(
    second: bytes, error: type[Exception]
) -> None:
    def serve(conn: socket.socket, server: RawServer) -> None:
        server.read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        server.read_head(conn)
        conn.sendall(second)

    server = RawServer(serve)
    try:
        s = session()
        assert s.post_bytes(f"{server.url}/ingest", b"", {}, timeout=5).status_code == 200
        with pytest.raises(error) as info:
            s.post_bytes(f"{server.url}/ingest", b"", {}, timeout=5)
        if second.startswith(b"HTTP/1.1 200 OK\r\nContent-Encoding"):
            assert isinstance(info.value, requests.exceptions.ContentDecodingError)
        assert server.requests == 2
    finally:
        server.close()


def test_credentials_in_the_url_are_sent_as_requests_sends_them_and_never_shown() -> None:
    server = Recorder(status=401)
    try:
        host = server.url.removeprefix("http://")
        url = f"http://user:p%40ss@{host}/ingest"
        session().post_bytes(url, b"{}", {}, timeout=5)
        requests.post(url, data=b"{}", timeout=5)
        ours, theirs = server.seen
        assert ours["headers"]["authorization"] == theirs["headers"]["authorization"] == "Basic dXNlcjpwQHNz"
        exporter = HttpExporter("http", HttpExporterConfig(url=url, retry=FAST))
        with pytest.raises(Misconfigured) as info:
            exporter.export([m("1")])
        assert "p%40ss" not in str(info.value) and "p@ss" not in str(info.value) and host in str(info.value)
    finally:
        server.close()


def test_a_callers_accept_encoding_is_kept_once() -> None:
    server = Recorder()
    try:
        session().post_bytes(f"{server.url}/x", b"{}", {"accept-encoding": "identity"}, timeout=5)
        session().post_bytes(f"{server.url}/y", b"{}", {}, timeout=5)
        assert server.seen[0]["headers"]["accept-encoding"] == "identity"
        assert server.seen[1]["headers"]["accept-encoding"] == "gzip, deflate"
    finally:
        server.close()
