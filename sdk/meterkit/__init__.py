"""meterkit: record billable usage where it happens; never lose it, never count it twice.

::

    import meterkit

    meterkit.configure(catalog="meters.yaml")

    @meterkit.meter("api_calls", measure={"calls": 1}, duration="seconds")
    def handler(request): ...

    with meterkit.context(account="acme"):
        meterkit.record("data_downloaded", measure={"bytes": 4096}, who={"user": "u1"})
"""

from ._api import configure, flush, get_client, record, shutdown, stats
from ._backfill import BatchResult
from ._catalog import (
    Catalog,
    Category,
    DataField,
    DerivedField,
    Meter,
    catalog_from_dict,
    load_catalog,
)
from ._client import Client
from ._errors import CatalogError, ConfigError, MeasurementError, MeterkitError, Problem
from ._expr import Expression, ExpressionError
from ._expr import parse as parse_expression
from ._meter import Metering, active_meter, meter
from ._scope import context

__version__ = "0.1.0"

__all__ = [
    "BatchResult",
    "Catalog",
    "CatalogError",
    "Category",
    "Client",
    "ConfigError",
    "DataField",
    "DerivedField",
    "Expression",
    "ExpressionError",
    "MeasurementError",
    "Meter",
    "Metering",
    "MeterkitError",
    "Problem",
    "__version__",
    "active_meter",
    "catalog_from_dict",
    "configure",
    "context",
    "flush",
    "get_client",
    "load_catalog",
    "meter",
    "parse_expression",
    "record",
    "shutdown",
    "stats",
]
