"""The exporters' session (:mod:`meterkit_agent.exporters.transport`): it reads the
environment as ``requests`` does, once; and :meth:`Session.post_bytes` posts through a real
server on 127.0.0.1 what ``requests.post`` would (headers, body, proxies from the
environment, a reused connection), but follows no redirect."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from meterkit_agent.exporters.transport import USER_AGENT, session
from tests.agent.exporters.helpers import Recorder


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()


def test_post_bytes_sends_what_requests_post_sends(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    ours = session(None, **{"Content-Type": "application/json"})
    headers = {"Idempotency-Key": "k1", "content-type": "application/x-ndjson"}  # a request's header wins
    first = ours.post_bytes(f"{recorder.url}/ingest?org=o%201", b'{"a":1}', headers, timeout=5)
    second = ours.post_bytes(f"{recorder.url}/ingest?org=o%201", b'{"a":22}', {"Idempotency-Key": "k2"}, timeout=5)
    theirs = requests.post(
        f"{recorder.url}/ingest?org=o%201",
        data=b'{"a":1}',
        headers={"User-Agent": USER_AGENT, **headers},
        timeout=5,
    )
    assert first.status_code == second.status_code == theirs.status_code == 200
    assert first.json() == {"ok": True} and first.text == theirs.text
    ours_seen, second_seen, theirs_seen = recorder.seen
    assert ours_seen["method"] == theirs_seen["method"] == "POST"
    assert ours_seen["target"] == theirs_seen["target"] == "/ingest?org=o%201"
    assert ours_seen["body"] == theirs_seen["body"] == b'{"a":1}'
    for name in ("user-agent", "content-type", "content-length", "idempotency-key"):
        assert ours_seen["headers"][name] == theirs_seen["headers"][name], name
    assert ours_seen["headers"]["content-type"] == "application/x-ndjson"
    assert second_seen["headers"]["idempotency-key"] == "k2" and second_seen["body"] == b'{"a":22}'
    assert second_seen["connection"] == ours_seen["connection"]  # the pooled connection, reused


def test_post_bytes_follows_no_redirect() -> None:
    """``requests.post`` would send a POST answered 302 again as a GET to the new place,
    and its 200 would pass for a delivery. The exporters' session hands the 302 back."""
    target = Recorder()
    moved = Recorder(302, location=f"{target.url}/elsewhere")
    try:
        response = session().post_bytes(f"{moved.url}/ingest", b"[]", {}, timeout=5)
        assert response.status_code == 302 and response.headers["Location"] == f"{target.url}/elsewhere"
        assert [s["method"] for s in moved.seen] == ["POST"] and target.seen == []
        requests.post(f"{moved.url}/ingest", data=b"[]", timeout=5)
        assert [s["method"] for s in target.seen] == ["GET"]  # what requests.post would have done
    finally:
        target.close()
        moved.close()


def test_post_bytes_goes_through_the_environments_proxy(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """``HTTP_PROXY`` is honoured as ``requests`` honours it: the proxy (the recorder here)
    receives the request with the backend's absolute URL."""
    monkeypatch.setenv("HTTP_PROXY", recorder.url)
    monkeypatch.delenv("http_proxy", raising=False)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    response = session().post_bytes("http://backend.invalid/ingest", b"{}", {}, timeout=5)
    assert response.status_code == 200
    assert recorder.seen[0]["target"] == "http://backend.invalid/ingest"


def test_a_session_reads_the_environment_as_requests_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/bundle.pem")
    ours, theirs = session(), requests.Session()
    for url in (
        "https://api.example.invalid/ingest",
        "http://127.0.0.1:9/ingest",
        "https://api.example.invalid/ingest",
    ):
        for args in (({}, None, None, None), ({"https": "http://other.invalid:1"}, None, False, None)):
            got = ours.merge_environment_settings(url, dict(args[0]), *args[1:])
            assert got == theirs.merge_environment_settings(url, dict(args[0]), *args[1:])
            got["proxies"]["https"] = "changed by a caller"  # not kept for the next request
    assert ours.merge_environment_settings("https://api.example.invalid/ingest", {}, None, None, None)["proxies"] == {
        "https": "http://proxy.invalid:3128",
        "no": "127.0.0.1",
    }
