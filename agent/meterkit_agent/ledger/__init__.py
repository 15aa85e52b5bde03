"""The ledger: a real, m3ter-compatible metering backend for local use, tests and small
deployments. SQLite by default, PostgreSQL for many agents on many hosts.

:mod:`.store` keeps measurements by uid; :mod:`.queries` answers usage queries;
:mod:`.api` serves m3ter's ingest API and the queries over HTTP.
"""

from .queries import UsageQuery
from .store import Ledger

__all__ = ["Ledger", "UsageQuery"]
