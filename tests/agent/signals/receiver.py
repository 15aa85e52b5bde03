"""A real webhook receiver on 127.0.0.1 for the delivery tests: it verifies every
signature and keeps every request it saw with what it answered. Built with
``fail_first=N`` it answers 500 to the first N requests and then goes down by itself (the
sender meets connection refused) until the test brings it back, on the same port,
answering 200 to every request whose signature verifies."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from meterkit_agent.signals import SignatureError, verify
from meterkit_agent.signals.signing import HEADER


@dataclass(frozen=True)
class Seen:
    event_id: str
    body: bytes
    signature: str
    verified: bool
    status: int


class Receiver:
    def __init__(self, secret: str, fail_first: int = 0) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.failing = fail_first > 0
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.stopped = threading.Event()
        self.hold_first = False  # the next request waits for `release`, then gets a 500
        self.held = threading.Event()
        self.release = threading.Event()
        self.up(self.failing)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/meterkit"

    def up(self, failing: bool = False) -> None:
        receiver = self
        self.failing = failing

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                signature = self.headers.get(HEADER, "")
                try:
                    verify(body, signature, receiver.secret)
                    verified = True
                except SignatureError:
                    verified = False
                with receiver.lock:
                    hold, receiver.hold_first = receiver.hold_first, False
                if hold:
                    receiver.held.set()
                    receiver.release.wait(60)
                with receiver.lock:
                    status = 500 if hold or receiver.failing else (200 if verified else 400)
                    receiver.seen.append(
                        Seen(self.headers.get("Meterkit-Event-Id", ""), body, signature, verified, status)
                    )
                    go_down = (
                        receiver.failing and sum(1 for s in receiver.seen if s.status == 500) == receiver.fail_first
                    )
                if go_down:  # from another thread: shutdown() waits for the serving loop
                    threading.Thread(target=receiver.down, daemon=True).start()
                self.close_connection = True  # one request per connection: down means refused
                self.send_response(status)
                self.send_header("Connection", "close")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.stopped.clear()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        """Stop listening: from now on a connection is refused."""
        with self.lock:
            server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self.stopped.set()

    def count(self, status: int) -> int:
        with self.lock:
            return sum(1 for s in self.seen if s.status == status)

    def snapshot(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)
