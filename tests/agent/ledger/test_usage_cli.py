"""``meterkit usage`` against a real ledger process with a catalog: exact values printed
plainly, every spelling of a period giving the same answer, and whatever it cannot answer
(a bad time or unit, an unknown meter or field) refused with exit 2 and a named reason."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from decimal import Decimal

import pytest
import requests

from tests.agent.conftest import TOKEN, LedgerServer, cli_cmd, start_ledger
from tests.agent.ledger.conftest import AUTH, measurement

CATALOG = """
meters:
  - code: downloads
    name: Downloads
    data_fields:
      - {code: bytes, name: Bytes, category: MEASURE}
      - {code: user, name: User, category: WHO}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerServer]:
    folder = tmp_path_factory.mktemp("usage-cli")
    (folder / "meters.yaml").write_text(CATALOG)
    server = start_ledger(folder, extra=("--catalog", str(folder / "meters.yaml")))
    records = [measurement(f"t{i}", "2026-11-01T00:00:00.000Z", measure={"bytes": 0.1}) for i in range(3)]
    records += [
        measurement(f"b{i}", "2026-11-15T10:00:00.000Z", "globex", measure={"bytes": 1_234_567}) for i in range(2)
    ]
    r = requests.post(
        f"{server.url}/organizations/o/measurements", json={"measurements": records}, headers=AUTH, timeout=30
    )
    assert r.status_code == 200, r.text
    yield server
    server.proc.kill()


def usage(server: LedgerServer, *args: str) -> subprocess.CompletedProcess[str]:
    base = ("usage", "--url", server.url, "--org", "o", "--meter", "downloads")
    env = {**os.environ, "METERKIT_LEDGER_TOKEN": TOKEN}  # on the command line, `ps` would show it
    return subprocess.run(cli_cmd(*base, *args), capture_output=True, text=True, timeout=60, env=env)


def test_exact_values_printed_plainly(server: LedgerServer) -> None:
    done = usage(server, "--field", "bytes")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["downloads", "acme", "0.3"]  # 0.1 + 0.1 + 0.1, exactly
    assert lines[2].split() == ["downloads", "globex", "2,469,134"]
    as_json = usage(server, "--field", "bytes", "--aggregation", "MEAN", "--json")
    assert json.loads(as_json.stdout, parse_float=Decimal) == [
        {"meter": "downloads", "account": "acme", "value": Decimal("0.1")},
        {"meter": "downloads", "account": "globex", "value": 1_234_567},
    ]


def test_every_spelling_of_a_period_gives_the_same_answer(server: LedgerServer) -> None:
    answers = {
        usage(server, "--field", "bytes", "--from", start, "--to", end, "--json").stdout
        for start, end in [
            ("2026-11-01T00:00:00Z", "2026-11-15T10:00:00Z"),
            ("2026-11-01", "2026-11-15T10:00:00.000Z"),
            ("2026-11-01T01:00:00+01:00", "2026-11-15T05:00:00-05:00"),
        ]
    }
    assert len(answers) == 1
    assert json.loads(answers.pop(), parse_float=Decimal) == [
        {"meter": "downloads", "account": "acme", "value": Decimal("0.3")}
    ]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--field", "bytes", "--from", "yesterday"), "--from: 'yesterday' is not an ISO 8601"),
        (("--field", "bytes", "--from", "2026-13-45"), "--from: '2026-13-45' is not a date that exists"),
        (("--field", "bytes", "--to", "2026-11-01T00:00:00"), "--to: '2026-11-01T00:00:00' has no offset"),
        (("--field", "bytes", "--quantity-per-unit", "1e-300"), "--quantity-per-unit: quantityPerUnit is 1e-300"),
        (("--field", "pages"), "meter 'downloads' has no field 'pages'"),
        (("--field", "user"), "'user' is a WHO field of meter 'downloads'; SUM needs a MEASURE"),
        (("--field", "bytes", "--group-by", "region"), "groupBy: meter 'downloads' has no field 'region'"),
        (("--field", "bytes", "--aggregation", "MEDIAN"), "aggregation must be one of"),
    ],
)
def test_what_cannot_be_answered_exits_2_naming_it(server: LedgerServer, args: tuple[str, ...], named: str) -> None:
    done = usage(server, *args)
    assert done.returncode == 2 and named in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_meter_or_organisation_is_named(server: LedgerServer) -> None:
    done = usage(server, "--meter", "uploads", "--field", "bytes")  # the last --meter counts
    assert done.returncode == 2 and "meter 'uploads' is not in the catalog" in done.stderr
    r = requests.get(f"{server.url}/organizations/o/usage", params={"meter": "uploads"}, headers=AUTH, timeout=30)
    assert r.status_code == 400 and "not in the catalog" in r.json()["message"]
    nobody = usage(server, "--field", "bytes", "--org", "nobody")
    assert nobody.returncode == 0 and "(no usage)" in nobody.stdout
    assert "note: organisation 'nobody' has stored nothing in this ledger" in nobody.stderr
