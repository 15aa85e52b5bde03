"""The HTTP session every exporter posts through: ``requests``, minus the work an exporter
repeats for nothing on every request.

An exporter posts bytes it built itself to one URL, many times a second, with the
credentials its configuration gives. ``requests.Session.post`` does much more per request:
it reads the environment's proxy and CA settings again (every variable, twice), looks for
a ``.netrc``, merges cookies and hooks, prepares the URL again, and follows redirects: on
the agent's hot path, about a third of a request's CPU. :meth:`Session.post_bytes` keeps
what matters and drops the rest:

- the environment's proxies and CA bundle are read once per URL (and what ``requests``
  itself worked out is kept, for the same arguments and session settings);
- the URL is prepared once; the headers are the session's, then the request's;
- the request goes through the session's own transport adapter (connection pooling, TLS,
  proxies, and what ``responses`` intercepts in tests);
- no ``.netrc`` lookup and no cookies: an exporter's credentials come from its
  configuration only (its headers, or a ``user:password@`` in its URL);
- no redirects: an ingest endpoint that redirects is misconfigured (``requests`` would
  turn a POST answered 301/302 into a GET, whose 200 would look like a delivery), so a 3xx
  comes back as it is and pauses delivery (:func:`.exporterhelper.classify`).

TLS. Every session verifies the server's certificate, against the system's trusted CAs
(``requests``' default; meterkit never turns verification off), or against ``tls.ca_file``
when one is configured (a private CA), which then wins over ``REQUESTS_CA_BUNDLE`` in the
environment. ``tls.cert_file`` and ``tls.key_file`` present a client certificate (mutual
TLS). A certificate that does not verify is a connection error: retried, and logged with
its reason, until the configuration or the server is fixed.

Everything else (the m3ter token exchange, Stripe's form posts, the balance lookups) uses the
session as any ``requests`` session.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import requests
from pydantic import model_validator
from requests.auth import HTTPBasicAuth
from requests.structures import CaseInsensitiveDict
from requests.utils import get_auth_from_url

from ..component import Settings
from ..credentials import private_key_problem
from .adapter import Adapter

USER_AGENT = "meterkit-agent/0.1"


class TlsConfig(Settings):
    """How a session checks the server and shows itself: ``ca_file``, the CA bundle (PEM)
    that signed the server's certificate (default: the system's); ``cert_file`` and
    ``key_file``, a client certificate and its private key (PEM) for mutual TLS."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _files(self) -> TlsConfig:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file (the client certificate it belongs to)")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a file")
        if self.key_file is not None and (problem := private_key_problem(self.key_file)) is not None:
            raise ValueError(f"key_file: {problem}")
        return self

    @property
    def verify(self) -> str | bool:
        """``requests``' ``verify``: the CA bundle's path, or True (the system's CAs)."""
        return str(self.ca_file) if self.ca_file is not None else True

    @property
    def cert(self) -> str | tuple[str, str] | None:
        """``requests``' ``cert``: the client certificate, with its key if in another file."""
        if self.cert_file is None:
            return None
        return (str(self.cert_file), str(self.key_file)) if self.key_file is not None else str(self.cert_file)


class Session(requests.Session):
    """A ``requests`` session that reads the environment's proxy and CA bundle settings
    once per URL, and posts bytes without the rest of ``requests``' per-request work
    (:meth:`post_bytes`).

    A configured CA bundle (``tls.ca_file``) wins over ``REQUESTS_CA_BUNDLE`` and
    ``CURL_CA_BUNDLE``, which ``requests`` would otherwise prefer to a session's own
    ``verify`` (psf/requests#3829): the configuration names this destination's CA."""

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._urls: dict[str, tuple[str, HTTPBasicAuth | None]] = {}

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        if isinstance(self.verify, str) and verify in (None, True):
            verify = self.verify
        if proxies or not self.trust_env:  # proxies given for this request: as requests does it
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        own = (self.stream, self.verify, self.cert, tuple(sorted(self.proxies.items())))
        key = (url, stream, verify, cert, own)
        settings = self._environment.get(key)
        if settings is None:
            if len(self._environment) > 64:
                self._environment.clear()
            settings = dict(super().merge_environment_settings(url, {}, stream, verify, cert))
            self._environment[key] = settings
        return {**settings, "proxies": dict(settings["proxies"])}

    def post_bytes(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> requests.Response:
        """POST ``body`` to ``url`` with the session's headers and ``headers`` (and Basic
        authentication from a ``user:password@`` in the URL, as ``requests`` does); the
        answer is read in full. Raises what ``requests`` raises (connection errors, timeouts)."""
        prepared, auth = self._prepared_url(url)
        request = requests.PreparedRequest()
        request.method = "POST"
        request.url = prepared
        merged = CaseInsensitiveDict(cast(Mapping[str, str], self.headers))  # the session's are all str
        merged.update(headers)
        merged["Content-Length"] = str(len(body))
        request.headers = merged
        request.body = body
        if auth is not None:
            auth(request)
        settings = self.merge_environment_settings(request.url, {}, None, None, None)
        response: requests.Response = self.get_adapter(request.url).send(request, timeout=timeout, **settings)
        response.content  # noqa: B018 - read the answer in full, as post() does, so the connection is reused
        return response

    def _prepared_url(self, url: str) -> tuple[str, HTTPBasicAuth | None]:
        found = self._urls.get(url)
        if found is None:
            request = requests.PreparedRequest()
            request.prepare_url(url, None)
            assert request.url is not None
            user, password = get_auth_from_url(request.url)
            found = self._urls[url] = (request.url, HTTPBasicAuth(user, password) if user or password else None)
        return found


def session(tls: TlsConfig | None = None, **headers: str) -> Session:
    """A pooled session that says who is calling, verifying certificates as ``tls`` says
    (the system's CAs by default)."""
    s = Session()
    for prefix in ("https://", "http://"):
        s.mount(prefix, Adapter())
    s.headers.update({"User-Agent": USER_AGENT, **headers})
    if tls is not None:
        s.verify, s.cert = tls.verify, tls.cert
    return s
