"""The transport adapter under every exporter session: ``requests``' interface, with the
standard library's ``http.client`` connections underneath.

``requests`` sends through ``urllib3``, whose pools, retries and response objects are
general: on this machine they cost about 0.3 ms of CPU per request above what
``http.client`` costs for the same POST, and an agent with two destinations holding the
interpreter's lock in turn pays it twice over. That is most of what a second destination
costs once the reading, parsing and serialising are shared. So :class:`Adapter` sends the
requests an exporter makes itself, one keep-alive connection per origin:

- ``http://`` and ``https://`` with no proxy, a body of bytes or text (or none), a float
  timeout, and the answer read at once;
- certificates verified as ``requests`` verifies them: against ``verify`` (a CA bundle file
  or directory, or ``requests``' own bundle for ``True``), with the host name checked, and
  ``cert`` presented as the client certificate;
- a kept connection the server has closed meanwhile is noticed before it is used (as
  ``urllib3`` does), and a new one is opened; one closed just as it is reused, with
  nothing sent back, is tried once more on a new one (every request an exporter makes is
  idempotent: uids, ``Idempotency-Key``);
- an answer sent before the body was read (a 413, a 401) is read, not lost to a broken pipe;
- the errors are ``requests``' own: :class:`~requests.exceptions.ConnectTimeout`,
  :class:`~requests.exceptions.ReadTimeout`, :class:`~requests.exceptions.SSLError`,
  :class:`~requests.exceptions.ConnectionError`.

Anything else (a proxy from the environment, a stream, a timeout pair, verification turned
off) goes through ``requests``' own :class:`~requests.adapters.HTTPAdapter`, unchanged.
No exporter keeps cookies: a ``Set-Cookie`` answer is not put into the session's jar.
"""

from __future__ import annotations

import http.client
import os
import ssl
import zlib
from datetime import timedelta
from time import perf_counter
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.exceptions import ConnectionError, ConnectTimeout, ReadTimeout, SSLError
from requests.structures import CaseInsensitiveDict
from requests.utils import DEFAULT_ACCEPT_ENCODING, DEFAULT_CA_BUNDLE_PATH, get_encoding_from_headers, select_proxy
from urllib3.util.wait import wait_for_read

Origin = tuple[str, str, int, Any, Any]  # scheme, host, port, verify, cert


class Adapter(HTTPAdapter):
    """``requests``' adapter, sending what an exporter sends over kept ``http.client``
    connections (see the module's docstring for what falls back to ``requests``' own)."""

    def __init__(self) -> None:
        super().__init__()
        self._idle: dict[Origin, http.client.HTTPConnection] = {}
        self._contexts: dict[tuple[Any, Any], ssl.SSLContext] = {}

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        """Send ``request`` as :class:`HTTPAdapter` would, over a kept connection when it
        is an exporter's kind of request (the module's docstring says which)."""
        parts = urlsplit(request.url or "")
        plain = (
            not stream
            and parts.scheme in ("http", "https")
            and isinstance(timeout, int | float)
            and verify is not False
            and isinstance(request.body, bytes | str | None)
            and not select_proxy(request.url or "", proxies or {})
        )
        if not plain:
            return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)
        origin: Origin = (parts.scheme, parts.hostname or "", parts.port or _PORTS[parts.scheme], verify, cert)
        start = perf_counter()
        connection, kept = self._take(origin, float(timeout))
        try:
            try:
                answer, body = _exchange(connection, request)
            except _Unanswered:
                if not kept:
                    raise
                # A kept connection the server closed just as it was reused (the check in
                # _take cannot see a close still on its way), and nothing came back: once
                # more, on a new one. Every request an exporter makes may go twice (uids,
                # Idempotency-Key); one that was answered, however badly, never goes again.
                connection.close()
                connection, _ = self._take(origin, float(timeout), keep=False)
                answer, body = _exchange(connection, request)
        except BaseException:
            connection.close()
            raise
        response = _response(request, answer, body)
        response.elapsed = timedelta(seconds=perf_counter() - start)
        response.connection = self
        if answer.will_close:
            connection.close()
        else:
            self._give_back(origin, connection)
        return response

    def close(self) -> None:
        while self._idle:
            _, connection = self._idle.popitem()
            connection.close()
        super().close()

    def _take(self, origin: Origin, timeout: float, keep: bool = True) -> tuple[http.client.HTTPConnection, bool]:
        """A kept connection to ``origin`` that is still open (unless not ``keep``), or a
        new one; and whether it was kept. A connection in use is out of :attr:`_idle`, so
        two threads never share one."""
        connection = self._idle.pop(origin, None) if keep else None
        if connection is not None and _dropped(connection):
            connection.close()
            connection = None
        if connection is None:
            scheme, host, port, verify, cert = origin
            if scheme == "https":
                connection = http.client.HTTPSConnection(host, port, context=self._context(verify, cert))
            else:
                connection = http.client.HTTPConnection(host, port)
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection, connection.sock is not None

    def _give_back(self, origin: Origin, connection: http.client.HTTPConnection) -> None:
        other = self._idle.pop(origin, None)
        self._idle[origin] = connection
        if other is not None:  # another thread's, kept meanwhile: one per origin is enough
            other.close()

    def _context(self, verify: Any, cert: Any) -> ssl.SSLContext:
        """The TLS context for ``verify`` and ``cert``, as ``requests`` reads them."""
        key = (verify, cert)
        context = self._contexts.get(key)
        if context is None:
            bundle = DEFAULT_CA_BUNDLE_PATH if verify is True else str(verify)
            try:
                if os.path.isdir(bundle):
                    context = ssl.create_default_context(capath=bundle)
                else:
                    context = ssl.create_default_context(cafile=bundle)
                if cert is not None:
                    certificate, key_file = (cert, None) if isinstance(cert, str) else cert
                    context.load_cert_chain(certificate, key_file)
                    context.post_handshake_auth = True  # a server may ask for it after the handshake
            except (OSError, ssl.SSLError) as exc:
                raise SSLError(f"TLS settings: {exc}") from None
            context.set_alpn_protocols(["http/1.1"])
            self._contexts[key] = context
        return context


_PORTS = {"http": 80, "https": 443}


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether the server closed a kept connection (it is readable: at its end, or with
    bytes nobody asked for), as ``urllib3`` checks before it reuses one."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        return wait_for_read(sock, timeout=0.0)
    except OSError:
        return True


class _Unanswered(ConnectionError):
    """The connection failed and nothing came back: no answer says the server read it."""


def _exchange(
    connection: http.client.HTTPConnection, request: requests.PreparedRequest
) -> tuple[http.client.HTTPResponse, bytes]:
    """Send ``request`` and read the answer in full, raising ``requests``' errors."""
    headers = CaseInsensitiveDict(request.headers)
    if headers.get("Accept-Encoding") == DEFAULT_ACCEPT_ENCODING:
        headers["Accept-Encoding"] = "gzip, deflate"  # what _decoded decodes (the default may add br, zstd)
    body = request.body.encode() if isinstance(request.body, str) else request.body
    try:
        try:
            connection.request(request.method or "GET", request.path_url, body=body, headers=dict(headers))
            sent = True
        except (BrokenPipeError, ConnectionResetError):
            sent = False  # a server may answer before it reads the body (a 413, a 401): read it
        try:
            answer = connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
            raise _Unanswered(exc, request=request) from None
        except OSError as exc:
            if sent:
                raise
            raise _Unanswered(exc, request=request) from None
        content = answer.read()
    except requests.RequestException:
        raise
    except ssl.SSLError as exc:  # before OSError: it is one
        raise SSLError(exc, request=request) from None
    except TimeoutError as exc:  # socket.timeout; no socket yet: the connection was never made
        raise (ReadTimeout if connection.sock is not None else ConnectTimeout)(exc, request=request) from None
    except (OSError, http.client.HTTPException) as exc:
        raise ConnectionError(exc, request=request) from None
    return answer, _decoded(answer, content)


def _decoded(answer: http.client.HTTPResponse, body: bytes) -> bytes:
    """The answer's body without its content coding (``requests`` asks for gzip and deflate)."""
    coding = (answer.getheader("Content-Encoding") or "").strip().lower()
    try:
        if coding == "gzip":
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if coding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, as some servers send
    except zlib.error as exc:
        raise requests.exceptions.ContentDecodingError(f"{coding} answer: {exc}") from None
    return body


def _response(request: requests.PreparedRequest, answer: http.client.HTTPResponse, body: bytes) -> requests.Response:
    """A :class:`requests.Response` as ``HTTPAdapter.build_response`` makes it, its body read."""
    response = requests.Response()
    response.status_code = answer.status
    response.reason = answer.reason
    response.headers = CaseInsensitiveDict({name: ", ".join(answer.msg.get_all(name) or []) for name in answer.msg})
    response.encoding = get_encoding_from_headers(response.headers)
    response.url = request.url or ""
    response.request = request
    response._content = body
    response.__dict__["_content_consumed"] = True  # read: iter_content slices _content (untyped in the stubs)
    return response
