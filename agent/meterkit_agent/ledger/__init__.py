"""The ledger: a real, m3ter-compatible metering backend for local use, tests and small
deployments. SQLite by default, PostgreSQL for many agents on many hosts."""

from .store import Ledger, UsageQuery

__all__ = ["Ledger", "UsageQuery"]
