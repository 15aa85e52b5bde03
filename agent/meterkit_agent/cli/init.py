"""``meterkit init``: write a starting ``meters.yaml`` and ``agent.yaml`` into a project.

Both files are commented for a first reading and pass ``meterkit meters validate`` and
``meterkit agent validate-config`` as written; ``meterkit dev`` runs them. An existing
file is never overwritten without ``--force``: it may be the user's work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .output import fail

METERS_YAML = """\
# The meter catalog: what your application measures. The SDK (meterkit.configure), the
# agent and the ledger load this one file. Check it with:  meterkit meters validate meters.yaml
# Meters follow m3ter's Meter model; each data field has a category:
#   WHO / WHAT / WHERE / OTHER / METADATA  text that describes a measurement
#   MEASURE / INCOME / COST                numbers that are summed, counted, billed
meters:
  - code: api_calls                 # what record("api_calls", ...) names
    name: API calls
    description: Requests to the API, billed per call.
    data_fields:
      - {code: calls, name: Calls, category: MEASURE, unit: "{API_calls}"}
      - {code: endpoint, name: Endpoint, category: WHAT}
      # A WHO field names a person or an organisation: say what leaves the application.
      #   keep          the value as given (checked by the PII guard)
      #   pseudonymize  a keyed hash; needs METERKIT_PSEUDONYMIZATION_KEY (docs/privacy.md)
      #   drop          nothing: removed before it is written
      # Choose pseudonymize before real users' identifiers are recorded.
      - {code: user, name: User, category: WHO, privacy: keep}
"""

AGENT_YAML = """\
# The sidecar agent: reads what the application spooled and delivers it, exactly once.
# Check it with:  meterkit agent validate-config agent.yaml
# `meterkit dev` runs it beside a local ledger. ${VAR:-default} reads the environment.

receivers:
  # The spool the SDK writes. Unset, both default to this project's state directory
  # (run from this directory, or set METERKIT_PROJECT to it); set METERKIT_SPOOL_DIR in
  # the application and `directory:` here to use another.
  spool: {}

processors:
  validate: {catalog: meters.yaml}  # a bad measurement is dead-lettered alone, with its reason
  derive: {catalog: meters.yaml}    # computes the catalog's derived fields
  batch: {max_measurements: 1000, timeout_millis: 1000}

exporters:
  # The local ledger (`meterkit dev`, or `meterkit ledger serve`) speaks m3ter's ingest
  # API. For m3ter itself remove base_url and give client_id and client_secret.
  m3ter:
    base_url: ${METERKIT_LEDGER_URL:-http://127.0.0.1:8765}
    org_id: default
    token: ${METERKIT_LEDGER_TOKEN:-none}

# extensions:
#   # keeps <spool dir>/balances.json fresh for meterkit.allow() caps, from a ledger
#   # serving --plans (docs/limits.md); enable it in service.extensions too
#   balances:
#     ledger_url: http://127.0.0.1:8765
#     org_id: default
#     token: LEDGER_TOKEN_HERE

service:
  # state_dir: checkpoint, dead letters, status; default: this project's state directory
  # extensions: [balances]
  pipelines:
    usage:
      receivers: [spool]
      processors: [validate, derive, batch]
      exporters: [m3ter]
"""

FILES = {"meters.yaml": METERS_YAML, "agent.yaml": AGENT_YAML}


def init_cmd(
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="the project directory (created if missing)")
    ] = Path(),
    force: Annotated[bool, typer.Option("--force", help="overwrite meters.yaml and agent.yaml if they exist")] = False,
) -> None:
    """Write a commented meters.yaml and agent.yaml to start metering a project; then
    `meterkit dev` runs a ledger and an agent for them. Exit 2 (nothing written) when
    either file exists and --force is not given."""
    existing = [name for name in FILES if (directory / name).exists()]
    if existing and not force:
        raise fail(f"{', '.join(str(directory / n) for n in existing)} already exist(s); --force overwrites")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in FILES.items():
            (directory / name).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot write to {directory}: {exc.strerror or exc}") from None
    for name in FILES:
        typer.echo(f"wrote {directory / name}")
    where = "" if directory.resolve() == Path.cwd().resolve() else f" --dir {directory}"
    typer.echo(f"next: meterkit dev{where}   (a ledger and an agent for local work; Ctrl-C stops both)")
