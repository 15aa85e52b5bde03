"""FastAPI: the ASGI middleware, plus sync ``yield`` dependencies that keep their scope.

::

    from meterkit.integrations.fastapi import MeterkitMiddleware

    app.add_middleware(MeterkitMiddleware, meter="api_calls", account="X-Account")

Importing this module needs FastAPI. The middleware is :mod:`meterkit.integrations.asgi`'s;
whenever FastAPI is loaded it also wraps FastAPI's runner of sync ``yield`` dependencies
(``_fastapi_dependencies``) so that one that enters ``meterkit.context(...)`` keeps it.
"""

from __future__ import annotations

from ._fastapi_dependencies import keep_scope_in_sync_dependencies
from .asgi import MeterkitMiddleware

__all__ = ["MeterkitMiddleware", "keep_scope_in_sync_dependencies"]
