"""Webhook signatures, the way Stripe signs its webhooks.

Each request carries ``Meterkit-Signature: t=<unix seconds>,v1=<hex>``, where ``<hex>`` is
HMAC-SHA256, keyed with the endpoint's secret, of ``"<t>.<body>"`` (the timestamp, a dot,
and the raw request body). The timestamp is signed with the body, so a captured request
cannot be replayed later than the receiver's tolerance, and every retry is signed afresh.

A receiver checks with :func:`verify`, on the raw bytes it received (not on JSON it
parsed and wrote again). More than one ``v1`` may be present (while a secret is being
rotated); one matching is enough. Comparison is constant-time.

This module imports nothing but the standard library, so a receiver can copy it.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Meterkit-Signature"
SCHEME = "v1"
#: Stripe's default: a signature older (or newer) than five minutes is refused
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(ValueError):
    """A request whose signature does not verify; ``reason`` is one of ``no_signature``,
    ``bad_header``, ``too_old``, ``mismatch``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _mac(payload: bytes, secret: str, timestamp: int) -> str:
    signed = str(timestamp).encode() + b"." + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Meterkit-Signature`` header value for ``payload`` at ``timestamp`` (now)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},{SCHEME}={_mac(payload, secret, t)}"


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if not value.isdigit() or len(value) > 12:
                raise SignatureError("bad_header", "the signature header's timestamp is not a number")
            timestamp = int(value)
        elif key == SCHEME:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureError("bad_header", f"the signature header has no timestamp or no {SCHEME} signature")
    return timestamp, signatures


def verify(
    payload: bytes,
    header: str | None,
    secret: str,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Check a request's ``Meterkit-Signature`` against its raw body. Raises
    :class:`SignatureError` unless one ``v1`` signature matches ``secret`` and the
    timestamp is within ``tolerance`` seconds of ``now`` (0: any age)."""
    if not header:
        raise SignatureError("no_signature", f"no {HEADER} header")
    timestamp, signatures = _parse(header)
    expected = _mac(payload, secret, timestamp)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise SignatureError("mismatch", "no signature matches the payload and the secret")
    current = time.time() if now is None else now
    if tolerance > 0 and abs(current - timestamp) > tolerance:
        raise SignatureError("too_old", f"the signature's timestamp is more than {tolerance} s from now")
