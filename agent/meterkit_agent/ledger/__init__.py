"""The ledger: a real, m3ter-compatible metering backend for local use, tests and small
deployments. SQLite by default, PostgreSQL for many agents on many hosts.

:mod:`.store` keeps measurements by uid (tables and migration in :mod:`.schema`);
:mod:`.queries` answers usage queries, exactly (:mod:`.exact`) and by instant
(:mod:`.instants`); :mod:`.api` serves m3ter's ingest API and the queries over HTTP.
"""

from .queries import QueryError, UsageQuery
from .store import Ingested, Ledger

__all__ = ["Ingested", "Ledger", "QueryError", "UsageQuery"]
