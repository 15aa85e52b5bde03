"""Framework integrations: one line meters every request or task.

One module per framework, each importing its framework only when imported itself (a
missing one raises an ImportError naming the pip extra): ``asgi`` (any ASGI app),
``fastapi`` (the ASGI middleware, plus sync ``yield`` dependencies that keep their
scope), ``wsgi`` (any WSGI app, and ``instrument_flask``), ``django``, ``celery`` and
``awslambda``. They share the account extractors below and the outcome values of
docs/integrations.md.
"""

from ._common import CLIENT_ERROR, ERROR, LIMITED, OK, RETRY, SERVER_ERROR, Extractor, header, jwt_claim

__all__ = ["CLIENT_ERROR", "ERROR", "LIMITED", "OK", "RETRY", "SERVER_ERROR", "Extractor", "header", "jwt_claim"]
