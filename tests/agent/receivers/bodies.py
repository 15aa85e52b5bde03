"""Hypothesis strategies for request bodies, shared by the receivers' and the ledger's
fuzz tests: random JSON, measurement-shaped JSON with random values, Content-Encodings
supported and not, and a payload encoded in one (gzip cut into random members)."""

from __future__ import annotations

import gzip
import zlib

from hypothesis import strategies as st

#: Content-Encoding values read_body accepts (None: no header)
SUPPORTED = {None, "identity", "gzip", "x-gzip", "GZIP", "deflate"}
encodings = st.sampled_from(
    [None, "identity", "gzip", "x-gzip", "GZIP", "deflate", "br", "zstd", "gzip, gzip", "compress", "garbage"]
)

# keys the endpoints look for, so random documents reach past the first isinstance check
json_keys = st.sampled_from(["measurements", "resourceLogs", "scopeLogs", "logRecords", "traceId", "spanId"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_keys | st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
fields = st.dictionaries(st.sampled_from(["bytes", "user", "region", "logins", "nope", ""]), json_values, max_size=3)
measurement = st.fixed_dictionaries(
    {},
    optional={
        "uid": st.text(max_size=120) | json_values,
        "meter": st.sampled_from(["data_downloaded", "logins", "unknown", ""]) | json_values,
        "account": st.text(max_size=10) | json_values,
        "ts": st.sampled_from(["2026-01-01T00:00:00Z", "2026-13-01", "yesterday", "9999-12-31T23:59:59Z"])
        | json_values,
        "ets": json_values,
        "who": fields | json_values,
        "measure": fields | json_values,
        "metadata": fields,
        "bogus": json_values,
    },
)
documents = st.one_of(
    json_values,
    st.lists(measurement, max_size=5),
    st.builds(lambda ms: {"measurements": ms}, st.lists(measurement, max_size=5)),
)


def encode(payload: bytes, encoding: str | None, cuts: list[int]) -> bytes:
    """The payload in its coding; gzip cut into members at random points (RFC 1952 §2.2)."""
    if encoding in ("gzip", "x-gzip", "GZIP"):
        points = sorted({c % (len(payload) + 1) for c in cuts})
        bounds = zip([0, *points], [*points, len(payload)], strict=True)
        return b"".join(gzip.compress(payload[a:b]) for a, b in bounds)
    if encoding == "deflate":
        return zlib.compress(payload)
    return payload
