"""The exporters' transport adapter (:mod:`meterkit_agent.exporters.adapter`) against real
servers on 127.0.0.1: kept connections, a connection the server closed, coded answers,
``requests``' errors, and what it leaves to ``requests``' own adapter. TLS (verification,
client certificates) is :mod:`tests.agent.exporters.test_tls`'."""

from __future__ import annotations

import socket

import pytest
import requests

from meterkit_agent.exporters.adapter import Adapter
from meterkit_agent.exporters.transport import session
from tests.agent.exporters.helpers import Recorder


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
