"""``meterkit dlq``: dead letters: list, inspect, correct and replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .output import DestinationOpt, StateDir, fail, print_table, state_dir_or_default

dlq_app = typer.Typer(help="Dead letters: list, inspect, correct and replay.", no_args_is_help=True)


@dlq_app.command("list")
def dlq_list(
    state_dir: StateDir = None,
    destination: DestinationOpt = None,
    include_replayed: Annotated[bool, typer.Option("--all", help="include dead letters already replayed")] = False,
) -> None:
    """Dead letters waiting for a decision."""
    from ..pipeline.deadletters import DeadLetters

    dead = DeadLetters(state_dir_or_default(state_dir, destination))
    rows = dead.rows(include_replayed)
    if not rows:
        typer.echo("no dead letters")
        return
    print_table(
        [
            {k: r[k] for k in ("id", "at", "reason", "meter", "account", "uid")} | {"replayed": r["replayed_at"] or ""}
            for r in rows
        ]
    )


@dlq_app.command("show")
def dlq_show(
    dead_id: Annotated[int, typer.Argument(metavar="ID", help="the dead letter's id, as `dlq list` shows it")],
    state_dir: StateDir = None,
    destination: DestinationOpt = None,
) -> None:
    """One dead letter: the measurement, the reason and the backend's answer."""
    from ..pipeline.deadletters import DeadLetters

    row = DeadLetters(state_dir_or_default(state_dir, destination)).get(dead_id)
    if row is None:
        raise fail(f"no dead letter {dead_id}", 1)
    body = row.pop("body")
    for key, value in row.items():
        typer.echo(f"{key:<12}{value if value is not None else ''}")
    typer.echo("measurement " + json.dumps(json.loads(body), indent=2))


@dlq_app.command("replay")
def dlq_replay(
    state_dir: StateDir = None,
    destination: DestinationOpt = None,
    fix_file: Annotated[
        Path | None, typer.Option("--fix-file", help="JSON lines of corrected measurements, matched by uid")
    ] = None,
    ids: Annotated[
        list[int] | None, typer.Option("--id", metavar="ID", help="replay only these (default: all waiting)")
    ] = None,
) -> None:
    """Hand dead letters (corrected from --fix-file where given) back to the agent.

    They keep their original uid. They are written to the agent's replay spool and
    delivered by the agent, running or at its next start; still-bad ones come back here.
    """
    from ..pipeline.deadletters import DeadLetters, write_replay

    directory = state_dir_or_default(state_dir, destination)
    fixes: dict[str, dict[str, Any]] = {}
    if fix_file is not None:
        for number, line in enumerate(fix_file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                fixed = json.loads(line)
            except json.JSONDecodeError as exc:
                raise fail(f"{fix_file}:{number}: not JSON: {exc}") from None
            if not isinstance(fixed, dict) or not isinstance(fixed.get("uid"), str):
                raise fail(f"{fix_file}:{number}: a correction must be a measurement with its original uid")
            fixes[fixed["uid"]] = fixed
    dead = DeadLetters(directory)
    rows = [r for r in dead.rows() if not ids or r["id"] in ids]
    if not rows:
        typer.echo("nothing to replay")
        return
    measurements = []
    for r in rows:
        original = json.loads(r["body"])
        uid = original.get("uid") if isinstance(original, dict) else None
        measurements.append(fixes.get(uid, original) if uid else original)
    unused = set(fixes) - {json.loads(r["body"]).get("uid") for r in rows if r["body"].startswith("{")}
    for uid in sorted(unused):
        typer.echo(f"warning: {fix_file}: uid {uid} matches no waiting dead letter", err=True)
    from meterkit._model import tally

    from ..audit.journal import Journal, compress_uids

    originals = [o for o in (json.loads(r["body"]) for r in rows) if isinstance(o, dict)]
    path = write_replay(directory, measurements)
    # The journal moves these out of "dead-lettered" and records what was handed back
    # (a correction may change the meter or account) as newly recorded.
    Journal(directory).append(
        [
            {
                "type": "replay",
                "count": len(measurements),
                "dead_letter_ids": [r["id"] for r in rows],
                "uids": compress_uids(
                    m["uid"] for m in measurements if isinstance(m, dict) and isinstance(m.get("uid"), str)
                ),
                "original_totals": tally(originals),
                "totals": tally(m for m in measurements if isinstance(m, dict)),
            }
        ]
    )
    dead.mark_replayed([r["id"] for r in rows])
    typer.echo(f"{len(rows)} dead letter(s) handed to the agent ({len(fixes) - len(unused)} corrected) in {path}")
