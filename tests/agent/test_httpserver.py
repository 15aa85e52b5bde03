"""Bounded bodies (``httpserver.read_body``): the limit holds as the body arrives, chunked
or not, and again after decompression; gzip members are all read, trailing bytes refused;
an unknown coding is a 415. Proven on the decoder, on an app driven chunk by chunk, and on
real processes: a chunked upload far over the limit is answered 413 while the agent's and
the ledger's peak memory barely moves."""

from __future__ import annotations

import asyncio
import gzip
import signal
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from meterkit_agent.httpserver import BodyDecoder, BodyError, content_coding, read_body
from tests.agent.conftest import TOKEN, free_port, start_agent, start_ledger, write_agent_config

LIMIT = 1000


def echo_app(limit: int = LIMIT) -> FastAPI:
    """An endpoint that answers with the body read_body gave it, or its BodyError."""
    app = FastAPI()

    @app.post("/")
    async def echo(request: Request) -> Response:
        try:
            return Response(await read_body(request, limit))
        except BodyError as exc:
            return Response(exc.message, status_code=exc.status, headers=exc.headers)

    return app


@pytest.fixture(scope="module")
def echo() -> TestClient:
    return TestClient(echo_app())


def post(client: TestClient, body: bytes, encoding: str | None = None) -> Any:
    return client.post("/", content=body, headers={"Content-Encoding": encoding} if encoding is not None else {})


def decode(coding: str, pieces: list[bytes], limit: int = LIMIT) -> bytes:
    decoder = BodyDecoder(coding, limit)
    for piece in pieces:
        decoder.feed(piece)
    return decoder.finish()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# -- codings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        ("", "identity"),
        ("identity", "identity"),
        ("GZIP", "gzip"),
        (" gzip ", "gzip"),
        ("x-gzip", "x-gzip"),
        ("deflate", "deflate"),
        ("identity, gzip", "gzip"),
        ("gzip, identity", "gzip"),
        ("br", None),
        ("zstd", None),
        ("compress", None),
        ("gzip, gzip", None),  # a stack of codings: nobody sends one, so it is refused, not decoded twice
        ("gzip, br", None),
        ("snappy", None),
    ],
)
def test_content_codings_accepted_and_refused(header: str, coding: str | None) -> None:
    if coding is not None:
        assert content_coding(header) == coding
        return
    with pytest.raises(BodyError) as info:
        content_coding(header)
    assert info.value.status == 415
    assert repr(header.strip()) in info.value.message  # the answer names the coding it refuses
    assert info.value.headers == {"Accept-Encoding": "gzip, deflate, identity"}  # RFC 9110 §15.5.16


def test_unknown_coding_is_a_415_that_names_it(echo: TestClient) -> None:
    r = post(echo, b"anything", "br")
    assert r.status_code == 415 and "'br'" in r.text
    assert r.headers["accept-encoding"] == "gzip, deflate, identity"


def test_identity_gzip_and_deflate_bodies_are_decoded(echo: TestClient) -> None:
    body = b'{"measurements": []}'
    assert post(echo, body).content == body
    assert post(echo, body, "identity").content == body
    assert post(echo, gzip.compress(body), "gzip").content == body
    assert post(echo, gzip.compress(body), "x-gzip").content == body
    assert post(echo, zlib.compress(body), "deflate").content == body
    assert post(echo, b"", "gzip").content == b""  # nothing to decode


def test_every_gzip_member_is_read(echo: TestClient) -> None:
    # `gzip -c a b > c` writes two members; RFC 1952 §2.2 makes the file their concatenation.
    members = gzip.compress(b"[1, ") + gzip.compress(b"2, ") + gzip.compress(b"3]")
    r = post(echo, members, "gzip")
    assert r.status_code == 200 and r.content == b"[1, 2, 3]"


@pytest.mark.parametrize(
    ("body", "encoding", "says"),
    [
        # mtime=0: gzip stamps the time, and a body (so a test id) must be the same in every
        # worker process that collects it
        (gzip.compress(b"[1]", mtime=0) + b"trailing", "gzip", "member 2"),
        (
            gzip.compress(b"[1]", mtime=0) + b"\x00\x00\x00\x00",
            "gzip",
            "member 2",
        ),  # zero padding is not a member either
        (gzip.compress(b"[1]", mtime=0) + b"\x1f", "gzip", "truncated"),  # the start of a member that never comes
        (gzip.compress(b"[1, 2, 3]", mtime=0)[:-4], "gzip", "truncated"),
        (b"not gzip at all", "gzip", "not valid gzip"),
        (zlib.compress(b"[1]") + b"more", "deflate", "after the end"),
        (zlib.compress(b"[1]")[2:], "deflate", "raw deflate is not accepted"),  # RFC 1951 without RFC 1950's header
        (zlib.compress(b"[1, 2, 3]")[:-2], "deflate", "truncated"),
    ],
)
def test_bodies_not_valid_in_their_coding_are_a_400(echo: TestClient, body: bytes, encoding: str, says: str) -> None:
    r = post(echo, body, encoding)
    assert r.status_code == 400 and says in r.text, r.text


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (b"x" * (LIMIT + 1), None),
        (gzip.compress(b"x" * (LIMIT + 1), mtime=0), "gzip"),  # small compressed, over the limit decompressed
        (gzip.compress(b" " * 10_000_000, mtime=0), "gzip"),  # a bomb: 10 MB from about 10 KB
        (
            gzip.compress(b"x" * 600, mtime=0) + gzip.compress(b"y" * 600, mtime=0),
            "gzip",
        ),  # each member fits, together they do not
        (zlib.compress(b" " * 10_000_000), "deflate"),
    ],
)
def test_over_the_limit_raw_or_decoded_is_a_413(echo: TestClient, body: bytes, encoding: str | None) -> None:
    r = post(echo, body, encoding)
    assert r.status_code == 413 and f"at most {LIMIT}" in r.text


def test_exactly_the_limit_is_accepted(echo: TestClient) -> None:
    assert post(echo, b"x" * LIMIT).status_code == 200
    assert post(echo, gzip.compress(b"x" * LIMIT), "gzip").content == b"x" * LIMIT


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
    level=st.integers(min_value=0, max_value=9),
)
def test_gzip_members_split_anywhere_decode_to_their_concatenation(
    parts: list[bytes], cuts: list[int], level: int
) -> None:
    """However the network splits a body (inside a header, between members, inside a
    trailer), the decoder sees the same members."""
    body = b"".join(gzip.compress(p, compresslevel=level) for p in parts)
    assert decode("gzip", split(body, cuts)) == b"".join(parts)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_the_decoded_limit_holds_however_the_body_is_split(data: bytes, cuts: list[int]) -> None:
    for coding, encoded in (("gzip", gzip.compress(data)), ("deflate", zlib.compress(data))):
        decoder = BodyDecoder(coding, LIMIT)
        refused: BodyError | None = None
        try:
            for piece in split(encoded, cuts):
                decoder.feed(piece)
                assert decoder.size <= LIMIT  # never holds more than the limit, even for a moment
            assert decoder.finish() == data
        except BodyError as exc:
            refused = exc
        assert (refused.status if refused else 200) == (413 if len(data) > LIMIT else 200)


# -- as the body arrives ---------------------------------------------------------------------


def drive(app: FastAPI, chunks: Iterator[bytes], headers: dict[str, str]) -> tuple[int, int, bytes]:
    """Call an ASGI app with a body delivered one chunk per ``receive()``, as a server does
    for a chunked upload. Returns (status, chunks the app pulled, answer)."""
    pulled = 0
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    return answer["status"], pulled, answer["body"]


def endless(chunk: bytes) -> Iterator[bytes]:
    while True:
        yield chunk


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit() -> None:
    status, pulled, answer = drive(echo_app(), endless(b"x" * 100), {"Transfer-Encoding": "chunked"})
    assert status == 413 and b"over 1000 bytes" in answer
    assert pulled == LIMIT // 100 + 1  # not one chunk more than it took to pass the limit


def test_a_gzip_stream_is_decoded_as_it_arrives_and_refused_once_it_decodes_past_the_limit() -> None:
    member = gzip.compress(b"x" * 300)

    status, pulled, answer = drive(echo_app(), endless(member), {"Content-Encoding": "gzip"})
    assert status == 413 and b"gzip-decoded request body is over 1000 bytes" in answer
    assert pulled == 4  # 4 x 300 decoded bytes pass 1,000; the raw bytes never did


def test_a_declared_length_over_the_limit_is_refused_before_a_byte_is_read() -> None:
    status, pulled, _ = drive(echo_app(), endless(b"x"), {"Content-Length": str(LIMIT + 1)})
    assert status == 413 and pulled == 0


def test_a_client_that_goes_away_mid_body_is_a_400_not_a_crash() -> None:
    app = echo_app()
    messages = iter([{"type": "http.request", "body": b"xx", "more_body": True}, {"type": "http.disconnect"}])
    answer: dict[str, Any] = {}

    async def receive() -> Any:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        answer.setdefault("status", message.get("status"))

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    asyncio.run(app(scope, receive, send))
    assert answer["status"] == 400


# -- real processes ----------------------------------------------------------------------------

MiB = 1024 * 1024
UPLOAD_BYTES = 64 * MiB  # a generous multiple of every limit below, small enough to send in a second or two
MAX_GROWTH_KIB = 30 * 1024


def status_kib(pid: int, field: str) -> int:
    """A memory figure of a process, in KiB, from /proc (VmRSS: now; VmHWM: the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def chunked(total: int, chunk: int = MiB) -> Iterator[bytes]:
    """A body with no known length: requests sends a generator with Transfer-Encoding: chunked."""
    block = b"x" * chunk
    for _ in range(total // chunk):
        yield block


def upload(url: str, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(url, data=chunked(UPLOAD_BYTES), headers=headers or {}, timeout=60)


def test_chunked_uploads_over_the_limit_are_refused_as_they_arrive(tmp_path: Path) -> None:
    ledger = start_ledger(tmp_path / "ledger")
    http_port, otlp_port = free_port(), free_port()
    receivers = (
        f"  http: {{endpoint: '127.0.0.1:{http_port}', max_request_bytes: {MiB}}}\n"
        f"  otlp: {{endpoint: '127.0.0.1:{otlp_port}', max_request_bytes: {MiB}}}"
    )
    config = write_agent_config(tmp_path, tmp_path / "spool", ledger.url, extra_receivers=receivers)
    config.write_text(config.read_text().replace("receivers: [spool, http]", "receivers: [spool, http, otlp]"))
    agent = start_agent(tmp_path, config)
    assert agent.popen is not None and ledger.proc.popen is not None
    targets = [
        ("agent /v1/measurements", agent.popen.pid, f"http://127.0.0.1:{http_port}/v1/measurements", {}),
        ("agent /v1/logs", agent.popen.pid, f"http://127.0.0.1:{otlp_port}/v1/logs", {}),
        (
            "ledger ingest",
            ledger.proc.popen.pid,
            f"{ledger.url}/organizations/o/measurements",
            {"Authorization": f"Bearer {TOKEN}"},
        ),
    ]
    try:
        for what, pid, url, headers in targets:
            # warm up: the endpoint's code is imported and its first request served
            assert requests.post(url, data=b"{}", headers=headers, timeout=10).status_code < 500
            rss, peak = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")
            r = upload(url, headers)
            grown = status_kib(pid, "VmHWM") - peak
            print(f"{what}: VmRSS {rss} KiB -> {status_kib(pid, 'VmRSS')} KiB, VmHWM +{grown} KiB")
            assert r.status_code == 413, (what, r.status_code, r.text)
            assert grown < MAX_GROWTH_KIB, f"{what}: peak memory grew {grown} KiB for a refused upload"
            assert requests.post(url, data=b"{}", headers=headers, timeout=10).status_code < 500  # still serving

        # A bomb: 64 KiB of gzip, chunked, that would decode to 64 MiB.
        bomb = gzip.compress(b" " * UPLOAD_BYTES)
        _, pid, url, _ = targets[0]
        peak = status_kib(pid, "VmHWM")
        r = requests.post(
            url,
            data=iter([bomb[i : i + 4096] for i in range(0, len(bomb), 4096)]),
            headers={"Content-Encoding": "gzip"},
            timeout=60,
        )
        grown = status_kib(pid, "VmHWM") - peak
        print(f"agent /v1/measurements, a {len(bomb)}-byte gzip bomb: VmHWM +{grown} KiB")
        assert r.status_code == 413 and "gzip-decoded request body is over" in r.json()["message"]
        assert grown < MAX_GROWTH_KIB
    finally:
        agent.kill(signal.SIGTERM)
        ledger.proc.kill()
