"""Pseudonyms: a keyed one-way function of a personal identifier, and the keys behind it.

A pseudonym is ``<key id>:`` followed by the 64 lowercase hex digits of
HMAC-SHA256(secret, value as UTF-8), untruncated: the same value and key give the same
pseudonym in every process and on every host, so per-person grouping and UNIQUE counts
still work, and nobody without the secret can reverse it with a dictionary (a plain hash
of an e-mail address can be; EDPB Guidelines 01/2025 on pseudonymisation recommend a MAC
with a secret held apart). 256 bits leave collisions out of the question; hex, because it
reads the same in every backend, case-insensitive ones included.

Keys come from the environment only, never from the catalog, and meterkit never writes
them anywhere (no error, log line or ``repr`` shows a secret):

- ``METERKIT_PSEUDONYMIZATION_KEY``: one or more keys, separated by spaces, commas or new
  lines;
- ``METERKIT_PSEUDONYMIZATION_KEY_FILE``: a file (not readable by others) of keys, one a
  line; ``#`` starts a comment. Used when the variable above is unset.

A key is ``<id>:<secret>`` or ``<id>:<secret>@<instant>``. The id is a letter followed by
at most 15 letters or digits (``k1``); the secret at least 32 characters (``python -c
"import secrets; print(secrets.token_hex(32))"``). **Rotation** goes by the measurement's
own time, never by the clock of the process: a key with ``@2027-01-01T00:00:00Z`` is the
one used for measurements from that instant on, the key before it for earlier ones. Put
the instant on a billing-period boundary and every measurement of a period is
pseudonymized with one key, so UNIQUE counts within a period stay right, in every process,
whichever started first; a late or backfilled measurement of an earlier period still gets
that period's pseudonym, as long as its key is still listed. At most one key has no
instant (the first one).

A value that already is a pseudonym of a listed key id (``k1:`` and 64 hex digits) is left
as it is: measurements read back from the ledger (corrections) keep their pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._errors import ConfigError
from ._timefmt import parse_ts

ENV_PSEUDONYMIZATION_KEY = "METERKIT_PSEUDONYMIZATION_KEY"
ENV_PSEUDONYMIZATION_KEY_FILE = "METERKIT_PSEUDONYMIZATION_KEY_FILE"
MIN_SECRET_LENGTH = 32
_KEY_ID = re.compile(r"[A-Za-z][A-Za-z0-9]{0,15}\Z")
_PSEUDONYM = re.compile(r"([A-Za-z][A-Za-z0-9]{0,15}):[0-9a-f]{64}\Z")
_CACHE_LIMIT = 65_536  # identifiers repeat: most pseudonyms cost a lookup
_sha256 = hashlib.sha256


@dataclass(frozen=True)
class Key:
    """One key: its id, its secret (never shown) and the instant it applies from."""

    id: str
    secret: bytes = field(repr=False)
    since_ns: int | None = None  # None: from the beginning


def pseudonym(value: str, key: Key) -> str:
    """``key.id:`` + hex HMAC-SHA256 of ``value`` (UTF-8; a lone surrogate as itself)."""
    digest = hmac.new(key.secret, value.encode("utf-8", "surrogatepass"), _sha256).hexdigest()
    return f"{key.id}:{digest}"


class Keyring:
    """The keys known to this process, ordered by the instant each applies from."""

    def __init__(self, keys: list[Key]) -> None:
        if not keys:
            raise ConfigError("a pseudonymization keyring needs at least one key")
        self.keys = sorted(keys, key=lambda k: k.since_ns or -(2**63))
        self.ids = frozenset(k.id for k in keys)
        self._starts = [k.since_ns or -(2**63) for k in self.keys]
        self.single = len(self.keys) == 1
        self._cache: dict[str, dict[str, str]] = {k.id: {} for k in self.keys}

    def __repr__(self) -> str:
        return f"Keyring(ids={sorted(self.ids)})"  # never the secrets

    def key_at(self, ts_ns: int | None) -> Key:
        """The key for a measurement at ``ts_ns`` (the earliest key before the first instant)."""
        if self.single or ts_ns is None:
            return self.keys[0] if self.single else self.keys[-1]
        return self.keys[max(bisect_right(self._starts, ts_ns) - 1, 0)]

    def is_pseudonym(self, value: str) -> bool:
        found = _PSEUDONYM.match(value) if len(value) <= 81 else None
        return found is not None and found.group(1) in self.ids

    def pseudonymize(self, value: str, ts_ns: int | None = None) -> str:
        """``value``'s pseudonym under the key for ``ts_ns``; a pseudonym of a known key as it is."""
        key = self.keys[0] if self.single else self.key_at(ts_ns)
        cache = self._cache[key.id]
        found = cache.get(value)
        if found is not None:
            return found
        if value[:1].isalpha() and self.is_pseudonym(value):
            return value
        made = pseudonym(value, key)
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[value] = made
        return made

    def pseudonyms_of(self, value: str) -> list[str]:
        """Every pseudonym ``value`` may have under the known keys (erasure looks for each)."""
        return [pseudonym(value, key) for key in self.keys]


def _parse_key(text: str, where: str) -> Key:
    """One ``id:secret[@instant]``; errors name ``where`` and the id, never the secret."""
    kid, sep, rest = text.partition(":")
    if not sep or not _KEY_ID.match(kid):
        raise ConfigError(f"{where}: a key is <id>:<secret>, its id a letter and up to 15 letters or digits")
    secret, at, since = rest.rpartition("@") if "@" in rest else (rest, "", "")
    since_ns = None
    if at:
        try:
            since_ns = parse_ts(since)
        except ValueError:
            raise ConfigError(f"{where}: key {kid!r}: the text after '@' is not an ISO 8601 instant") from None
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{where}: key {kid!r}: its secret is shorter than {MIN_SECRET_LENGTH} characters")
    return Key(kid, secret.encode("utf-8"), since_ns)


def parse_keys(text: str, where: str) -> list[Key]:
    """The keys in ``text`` (separated by spaces, commas or lines; ``#`` comments)."""
    items = [item for line in text.splitlines() for item in re.split(r"[\s,]+", line.split("#", 1)[0]) if item]
    keys = [_parse_key(item, f"{where}, key {n}") for n, item in enumerate(items, 1)]
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: a key id is listed twice")
    if sum(k.since_ns is None for k in keys) > 1:
        raise ConfigError(f"{where}: only one key may apply from the beginning; give the others '@<instant>'")
    starts = [k.since_ns for k in keys if k.since_ns is not None]
    if len(set(starts)) != len(starts):
        raise ConfigError(f"{where}: two keys apply from the same instant")
    return keys


def _read_key_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as stream:
            mode = os.fstat(stream.fileno()).st_mode
            if mode & (stat.S_IROTH | stat.S_IWOTH):
                raise ConfigError(
                    f"{ENV_PSEUDONYMIZATION_KEY_FILE}: {path} is readable or writable by others; chmod o-rw"
                )
            return stream.read(64 * 1024)
    except OSError as exc:
        raise ConfigError(f"{ENV_PSEUDONYMIZATION_KEY_FILE}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{ENV_PSEUDONYMIZATION_KEY_FILE}: {path} is not UTF-8 text") from None


def load_keyring(environ: Mapping[str, str] | None = None) -> Keyring | None:
    """The keyring the environment gives, or None when it gives none. Raises
    :class:`ConfigError` for a malformed one (naming the variable, never a secret)."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_PSEUDONYMIZATION_KEY, "")
    if text.strip():
        return Keyring(parse_keys(text, ENV_PSEUDONYMIZATION_KEY))
    path = env.get(ENV_PSEUDONYMIZATION_KEY_FILE, "")
    if path:
        keys = parse_keys(_read_key_file(path), ENV_PSEUDONYMIZATION_KEY_FILE)
        if not keys:
            raise ConfigError(f"{ENV_PSEUDONYMIZATION_KEY_FILE}: {path} holds no key")
        return Keyring(keys)
    return None
