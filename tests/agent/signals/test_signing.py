"""Signatures as Stripe makes them: HMAC-SHA256 of "<t>.<body>", checked in constant time
with a tolerance on the timestamp."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from meterkit_agent.signals import SignatureError, sign, verify

BODY = b'{"id":"evt_1","type":"cap_threshold"}'
SECRET = "whsec_test_secret"
T = 1_768_000_000


def test_the_header_is_t_and_v1_hmac_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET, T) == f"t={T},v1={expected}"


def test_a_good_signature_verifies_within_the_tolerance() -> None:
    verify(BODY, sign(BODY, SECRET, T), SECRET, tolerance=300, now=T + 300)
    verify(BODY, sign(BODY, SECRET, T), SECRET, tolerance=0, now=T + 10**6)  # 0: any age


@pytest.mark.parametrize(
    ("body", "header", "secret", "now", "reason"),
    [
        (BODY, sign(BODY, SECRET, T), "another-secret", T, "mismatch"),
        (BODY + b" ", sign(BODY, SECRET, T), SECRET, T, "mismatch"),
        (BODY, sign(BODY, SECRET, T), SECRET, T + 301, "too_old"),
        (BODY, sign(BODY, SECRET, T), SECRET, T - 301, "too_old"),
        (BODY, sign(BODY, SECRET, T).replace(f"t={T}", f"t={T + 1}"), SECRET, T, "mismatch"),
        (BODY, None, SECRET, T, "no_signature"),
        (BODY, "", SECRET, T, "no_signature"),
        (BODY, f"t={T}", SECRET, T, "bad_header"),
        (BODY, "v1=abc", SECRET, T, "bad_header"),
        (BODY, "t=soon,v1=abc", SECRET, T, "bad_header"),
    ],
)
def test_what_does_not_verify(body: bytes, header: str | None, secret: str, now: int, reason: str) -> None:
    with pytest.raises(SignatureError) as raised:
        verify(body, header, secret, tolerance=300, now=now)
    assert raised.value.reason == reason
    assert secret not in str(raised.value)


def test_any_one_of_several_v1_signatures_is_enough() -> None:
    old = sign(BODY, "old-secret", T).split(",")[1]
    verify(BODY, f"t={T},{old},{sign(BODY, SECRET, T).split(',')[1]}", SECRET, now=T)
