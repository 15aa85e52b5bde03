"""The privacy routes: ``POST /organizations/{org}/privacy/erase`` (:mod:`.erasure`)."""

# No ``from __future__ import annotations``: FastAPI reads route annotations (as in .digests).

from typing import Any

import orjson
from fastapi import FastAPI

from .erasure import ErasureIdUsed, erase
from .store import Ledger


def register(app: FastAPI, ledger: Ledger, auth: list[Any]) -> None:
    """``POST /organizations/{org}/privacy/erase``: body ``{"id", "forms": [pseudonyms],
    "sha256": hex or null, "dryRun": bool}``; answers what was (or would be) rewritten."""
    import re

    from fastapi import Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    from ..httpserver import BodyError, json_response, read_body

    ident = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
    hexed = re.compile(r"[0-9a-f]{64}\Z")

    @app.post("/organizations/{org_id}/privacy/erase", dependencies=auth)
    async def erase_route(org_id: str, request: Request) -> Response:
        try:
            doc = orjson.loads(await read_body(request, 1_000_000))
        except (BodyError, orjson.JSONDecodeError):
            doc = None
        ok = isinstance(doc, dict) and isinstance(doc.get("id"), str) and ident.match(doc["id"])
        forms = doc.get("forms") if ok else None
        sha = doc.get("sha256") if ok else None
        if (
            not ok
            or not isinstance(forms, list)
            or not all(isinstance(f, str) and 0 < len(f) <= 200 for f in forms)
            or len(forms) > 64
            or not (sha is None or (isinstance(sha, str) and hexed.match(sha)))
            or (not forms and sha is None)
        ):
            message = 'body must be {"id": id, "forms": [pseudonym, ...], "sha256": hex or null, "dryRun": bool}'
            return json_response({"message": message}, 400)
        dry = doc.get("dryRun") is True
        try:
            found = await run_in_threadpool(erase, ledger, org_id, doc["id"], forms, sha, dry)
        except ErasureIdUsed as exc:
            return json_response({"message": str(exc)}, 409)
        return json_response({"id": doc["id"], "dryRun": dry, **found.answer()})
