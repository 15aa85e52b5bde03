"""Privacy by design in the SDK (docs/privacy.md): the catalog's privacy settings, keys and
pseudonyms, the PII guard's policies and minimal data, on every path the SDK writes.
The constants and helpers at the top are shared with the agent's privacy tests."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

import meterkit
from meterkit import CatalogError, ConfigError, MeasurementError
from meterkit._catalog import catalog_from_dict
from meterkit._client import write_with_control
from meterkit._corrections import control_record, reversal
from meterkit._pii import detect
from meterkit._pseudonyms import load_keyring, parse_keys
from tests.sdk.helpers import losses, spooled

SECRET_1 = "first-secret-0123456789abcdef0123456789"
SECRET_2 = "second-secret-0123456789abcdef012345678"
KEY_1 = f"k1:{SECRET_1}"

EMAIL = "alice.private@example.com"
PHONE = "+44 20 7946 0958"
CARD = "4111 1111 1111 1111"
IP = "203.0.113.77"
USER = "alice-user-7731"  # pseudonymized by privacy: pseudonymize
DROPPED = "dropped-value-5521"
RAW = [EMAIL, PHONE, CARD, IP, USER, DROPPED, SECRET_1, SECRET_2]

CATALOG_YAML = """
meters:
  - code: logins
    name: Logins
    data_fields:
      - {code: user, name: User, category: WHO, privacy: pseudonymize}
      - {code: email, name: Contact, category: WHO, privacy: drop}
      - {code: team, name: Team, category: WHO, privacy: keep}
      - {code: note, name: Note, category: OTHER}
      - {code: n, name: Logins, category: MEASURE}
  - code: guarded
    name: Rejects PII
    pii: reject
    data_fields:
      - {code: note, name: Note, category: OTHER}
      - {code: n, name: N, category: MEASURE}
  - code: hidden
    name: Pseudonymizes PII
    pii: pseudonymize
    data_fields:
      - {code: note, name: Note, category: OTHER}
      - {code: n, name: N, category: MEASURE}
  - code: open
    name: Allows PII
    pii: allow
    data_fields:
      - {code: note, name: Note, category: OTHER}
      - {code: n, name: N, category: MEASURE}
"""


def period_boundary() -> tuple[str, str]:
    """This month's first instant and the last millisecond before it, as wire text."""
    start = datetime.now(timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start.strftime("%Y-%m-%dT00:00:00Z"), (start - timedelta(milliseconds=1)).strftime("%Y-%m-%dT23:59:59.999Z")


def rotating(boundary: str) -> str:
    """k1 before ``boundary``, k2 from then on: rotation at a billing-period boundary."""
    return f"{KEY_1} k2:{SECRET_2}@{boundary}"


def write_catalog(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "meters.yaml"
    path.write_text(CATALOG_YAML)
    return path


def expected_pseudonym(value: str, key_id: str = "k1", secret: str = SECRET_1) -> str:
    """Computed here, independently of meterkit: ``<id>:`` + hex HMAC-SHA256."""
    return f"{key_id}:" + hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()


def leaks(raw: list[str], *roots: Path) -> list[tuple[str, str]]:
    """(file, value) for each raw value found in the bytes of any file under ``roots``."""
    found = []
    for root in roots:
        for path in (p for p in root.rglob("*") if p.is_file()) if root.exists() else []:
            data = path.read_bytes()
            found += [(str(path), value) for value in raw if value.encode() in data]
    return found


def rejected_file(spool: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for f in (spool / "rejected").glob("*.jsonl") for line in f.read_bytes().splitlines()]


def by_meter(spool: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for m in spooled(spool):
        out.setdefault(m["meter"], []).append(m)
    return out


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    return write_catalog(tmp_path / "catalog")


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERKIT_PSEUDONYMIZATION_KEY", KEY_1)


def record_everything(client: meterkit.Client, **ts: Any) -> None:
    client.record("logins", account="acme", measure={"n": 1}, who={"user": USER, "email": DROPPED, "team": "t1"}, **ts)
    client.record("logins", account="acme", measure={"n": 1}, who={"team": EMAIL}, other={"note": PHONE}, **ts)
    client.record("guarded", account="acme", measure={"n": 1}, other={"note": CARD}, **ts)
    client.record("guarded", account="acme", measure={"n": 2}, other={"note": "fine"}, **ts)
    client.record("hidden", account="acme", measure={"n": 1}, other={"note": IP}, **ts)
    client.record("open", account="acme", measure={"n": 1}, other={"note": "v1.2.3.4 build 12"}, **ts)


# -- the catalog ---------------------------------------------------------------------------


def test_the_catalog_reports_every_privacy_problem_in_one_pass() -> None:
    doc = {
        "meters": [
            {
                "code": "m",
                "name": "M",
                "pii": "hash",
                "data_fields": [
                    {"code": "user", "name": "U", "category": "WHO", "privacy": "encrypt"},
                    {"code": "bytes", "name": "B", "category": "MEASURE", "privacy": "pseudonymize"},
                    {"code": "secret", "name": "S", "category": "MEASURE", "privacy": "drop"},
                ],
                "derived_fields": [
                    {"code": "d", "name": "D", "category": "MEASURE", "calculation": "secret * 2", "privacy": "keep"}
                ],
            }
        ]
    }
    with pytest.raises(CatalogError) as info:
        catalog_from_dict(doc)
    found = {(p.field, p.message.split(":")[0]) for p in info.value.problems}
    assert found == {
        (None, "pii"),
        ("user", "privacy"),
        ("bytes", "privacy"),  # pseudonymize applies to text fields
        ("d", "privacy applies to data fields; a derived field is computed in the agent from them"),
        (
            "d",
            "calculation reads 'secret', which is not a data field, custom field or timestamp of this meter (it is privacy",
        ),
    }
    assert all(p.meter == "m" for p in info.value.problems)


def test_privacy_settings_load_and_say_what_was_not_said(catalog_file: Path) -> None:
    catalog = meterkit.load_catalog(catalog_file)
    fields = {f.code: f.privacy for f in catalog.meters["logins"].data_fields}
    assert fields == {"user": "pseudonymize", "email": "drop", "team": "keep", "note": None, "n": None}
    assert [catalog.meters[m].pii for m in ("logins", "guarded", "hidden", "open")] == [
        None,
        "reject",
        "pseudonymize",
        "allow",
    ]


# -- keys and pseudonyms -------------------------------------------------------------------


def test_a_pseudonym_is_the_keyed_hmac_prefixed_with_the_key_id_and_is_stable() -> None:
    keyring = load_keyring({"METERKIT_PSEUDONYMIZATION_KEY": KEY_1})
    assert keyring is not None
    made = keyring.pseudonymize(USER)
    assert made == expected_pseudonym(USER) and len(made) == 3 + 64
    assert keyring.pseudonymize(made) == made  # idempotent: a pseudonym of a known key stays
    other = "k9:" + "0" * 64  # an unknown key id: a value like any other
    assert keyring.pseudonymize(other) == expected_pseudonym(other)
    assert SECRET_1 not in repr(keyring) and SECRET_1 not in repr(keyring.keys)


def test_pseudonyms_agree_across_processes(tmp_path: Path) -> None:
    code = (
        "import sys; sys.path.insert(0, 'sdk'); from meterkit._pseudonyms import load_keyring;"
        f" print(load_keyring().pseudonymize({USER!r}))"
    )
    env = {**os.environ, "METERKIT_PSEUDONYMIZATION_KEY": KEY_1}
    outputs = {
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(2)
    }
    assert outputs == {expected_pseudonym(USER)}


@pytest.mark.parametrize(
    ("text", "wrong"),
    [
        ("k1", "a key is <id>:<secret>"),
        ("1k:" + "x" * 40, "a key is <id>:<secret>"),
        ("k1:short-secret", "shorter than 32"),
        (f"{KEY_1} k1:{SECRET_2}@2027-01-01T00:00:00Z", "listed twice"),
        (f"{KEY_1} k2:{SECRET_2}", "only one key may apply from the beginning"),
        (f"{KEY_1} k2:{SECRET_2}@next-year", "not an ISO 8601 instant"),
    ],
)
def test_a_malformed_key_is_refused_without_showing_a_secret(text: str, wrong: str) -> None:
    with pytest.raises(ConfigError, match=wrong) as info:
        parse_keys(text, "METERKIT_PSEUDONYMIZATION_KEY")
    assert SECRET_1 not in str(info.value) and SECRET_2 not in str(info.value)


def test_a_key_file_readable_by_others_is_refused_and_a_private_one_is_used(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# rotated on the first of December\n{KEY_1}\nk2:{SECRET_2}@2026-12-01T00:00:00Z\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable or writable by others") as info:
        load_keyring({"METERKIT_PSEUDONYMIZATION_KEY_FILE": str(path)})
    assert SECRET_1 not in str(info.value)
    path.chmod(0o600)
    keyring = load_keyring({"METERKIT_PSEUDONYMIZATION_KEY_FILE": str(path)})
    assert keyring is not None and sorted(keyring.ids) == ["k1", "k2"]


def test_a_catalog_asking_for_pseudonyms_without_a_key_fails_at_setup(catalog_file: Path, spool: Path) -> None:
    for mode in ("production", "strict"):
        with pytest.raises(ConfigError, match="METERKIT_PSEUDONYMIZATION_KEY") as info:
            meterkit.Client(catalog_file, spool, mode=mode)
        assert "logins.who.user" in str(info.value) and "hidden" in str(info.value)


# -- the PII guard's detectors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (EMAIL, "email"),
        ("write to bob+x@mail.example.co.uk today", "email"),
        (CARD, "card"),
        ("5500-0000-0000-0004", "card"),
        (IP, "ip"),
        ("2001:db8::ff00:42:8329", "ip"),
        ("::1", "ip"),
        (PHONE, "phone"),
        ("(415) 555-0123", "phone"),
        ("415.555.0123", "phone"),
        # not personal data, or not taken for it (docs/privacy.md says why)
        ("550e8400-e29b-41d4-a716-446655440000", None),
        ("v1.2.3.4", None),
        ("10.0.19041.1", None),
        ("1.2.3", None),
        ("12:30:45", None),
        ("2026-11-26T07:40:15Z", None),
        ("4111111111111112", None),  # Luhn fails
        ("1767225600123", None),  # a millisecond timestamp
        ("1767225600123456789", None),
        ("order 12345678", None),
        ("/api/v2/users/1234567", None),
        ("k1:" + "4111111111111111" + "ab" * 24, None),
    ],
)
def test_the_detectors(value: str, kind: str | None) -> None:
    assert detect(value) == kind


# -- every policy, production mode (batch frames) --------------------------------------------


def test_production_applies_every_setting_before_the_spool_and_leaks_nothing(
    catalog_file: Path, spool: Path, keyed: None, caplog: pytest.LogCaptureFixture
) -> None:
    client = meterkit.Client(catalog_file, spool, flush_interval_millis=20)
    record_everything(client)
    client.record("guarded", account="acme", measure={"n": 3}, other={"note": "ring " + PHONE})
    stats_privacy = dict(client.stats()["privacy"]) if client.flush(5) else {}
    assert client.shutdown(5)
    got = by_meter(spool)
    assert [m["who"] for m in got["logins"]] == [
        {"user": expected_pseudonym(USER), "team": "t1"},  # email: privacy drop
        {"team": "[redacted:email]"},  # a keep field is guarded
    ]
    assert got["logins"][1]["other"] == {"note": "[redacted:phone]"}
    assert [m["other"]["note"] for m in got["guarded"]] == ["fine"]  # the others refused
    assert got["hidden"][0]["other"] == {"note": expected_pseudonym(IP)}
    assert got["open"][0]["other"] == {"note": "v1.2.3.4 build 12"}
    assert losses(spool) == {"rejected:pii_detected": 2}
    assert stats_privacy == {
        "redacted:email": 1,
        "redacted:phone": 1,
        "pseudonymized:ip": 1,
        "rejected:pii_detected": 2,
    }
    assert [(r["reason"], r["field"]) for r in rejected_file(spool)] == [("pii_detected", "other.note")] * 2
    assert leaks(RAW, spool) == []
    assert not [r for r in caplog.records if any(v in r.getMessage() for v in RAW)]


def test_production_sends_only_declared_fields(catalog_file: Path, spool: Path, keyed: None) -> None:
    client = meterkit.Client(catalog_file, spool)
    with meterkit.context(who={"user": USER, "stray": "from the scope"}):
        client.record("logins", account="acme", measure={"n": 1}, where={"ip": IP}, other={"note": "ok", "x": "y"})
    client.record("logins", account="acme", measure={"n": 1, "typo": 5})  # a number: refused, counted
    assert client.shutdown(5)
    (written,) = spooled(spool)
    assert {k: v for k, v in written.items() if k in ("who", "where", "other", "measure")} == {
        "who": {"user": expected_pseudonym(USER)},
        "other": {"note": "ok"},
        "measure": {"n": 1},
    }
    assert losses(spool) == {"rejected:unknown_field": 1}
    assert leaks([USER, IP, "from the scope"], spool) == []


# -- strict mode, sync durability, backfill, corrections ------------------------------------


def test_strict_mode_pseudonymizes_and_raises_for_pii_without_showing_it(
    catalog_file: Path, spool: Path, keyed: None
) -> None:
    client = meterkit.Client(catalog_file, spool, mode="strict")
    client.record("logins", account="acme", measure={"n": 1}, who={"user": USER})
    with pytest.raises(MeasurementError) as info:
        client.record("guarded", account="acme", measure={"n": 1}, other={"note": CARD})
    assert info.value.reason == "pii_detected" and CARD not in str(info.value) and "card" in str(info.value)
    with pytest.raises(MeasurementError) as typed:
        client.record("logins", account="acme", measure={"n": 1}, who={"user": 1.5})
    assert typed.value.reason == "wrong_type"
    assert client.shutdown(5)
    assert [m["who"] for m in spooled(spool)] == [{"user": expected_pseudonym(USER)}]
    assert leaks(RAW, spool) == []


def test_sync_durability_backfill_and_corrections_write_no_raw_value(
    catalog_file: Path, spool: Path, keyed: None
) -> None:
    client = meterkit.Client(catalog_file, spool, durability="sync")
    client.record("logins", account="acme", measure={"n": 1}, who={"user": USER, "email": DROPPED})
    client.record("guarded", account="acme", measure={"n": 1}, other={"note": EMAIL})  # refused: counted
    row = {"meter": "logins", "account": "acme", "ts": "2026-01-02T00:00:00Z", "measure": {"n": 2}}
    result = client.submit_batch([{**row, "who": {"user": USER}}, {**row, "other": {"note": PHONE}}])
    assert (result.accepted, result.rejected) == (2, 0)
    original = {**row, "uid": "u-1", "ts": "2026-01-02T00:00:00.000Z", "who": {"user": USER}}
    records = [reversal(original)]
    write_with_control(client, records, control_record("cancel", "wrong", "ops", "t", ["u-1"], [records[0]["uid"]]))
    assert client.shutdown(5)
    users = [m["who"]["user"] for m in spooled(spool) if "user" in m.get("who", {})]
    assert users == [expected_pseudonym(USER)] * 3  # the record, the backfilled row, the reversal
    notes = [m["other"]["note"] for m in spooled(spool) if "other" in m]
    assert notes == ["[redacted:phone]"]
    assert losses(spool) == {"rejected:pii_detected": 1}
    assert leaks(RAW, spool) == []


# -- key rotation --------------------------------------------------------------------------


def test_rotation_follows_the_measurement_time_so_a_period_has_one_key(
    catalog_file: Path, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """k2 applies from this month's first instant: a last-month measurement recorded after
    the rotation (late, or by a process that started later) still gets its k1 pseudonym, so
    UNIQUE over last month counts each user once; this month's are k2's."""
    boundary, before = period_boundary()
    monkeypatch.setenv("METERKIT_PSEUDONYMIZATION_KEY", rotating(boundary))
    client = meterkit.Client(catalog_file, spool)
    for ts in (before, boundary, before.replace("T23:59:59.999Z", "T12:00:00+05:00")):
        for user in (USER, "bob"):
            client.record("logins", account="acme", measure={"n": 1}, who={"user": user}, ts=ts)
    assert client.shutdown(5)
    month = boundary[:7]  # "YYYY-MM": wire times of this month start with it
    last = {m["who"]["user"] for m in spooled(spool) if m["ts"][:7] < month}
    this = {m["who"]["user"] for m in spooled(spool) if m["ts"][:7] == month}
    assert last == {expected_pseudonym(USER), expected_pseudonym("bob")}
    assert this == {expected_pseudonym(USER, "k2", SECRET_2), expected_pseudonym("bob", "k2", SECRET_2)}
    assert leaks(RAW, spool) == []
