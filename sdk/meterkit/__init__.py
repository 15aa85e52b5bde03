"""meterkit: record billable usage where it happens; never lose it, never count it twice.

::

    import meterkit

    meterkit.configure(catalog="meters.yaml")

    @meterkit.meter("api_calls", measure={"calls": 1}, duration="seconds")
    def handler(request): ...

    with meterkit.context(account="acme"):
        meterkit.record("data_downloaded", measure={"bytes": 4096}, who={"user": "u1"})
"""

from ._api import allow, configure, flush, get_client, record, shutdown, stats
from ._backfill import BatchResult
from ._catalog import (
    Catalog,
    DataField,
    DerivedField,
    Meter,
    catalog_from_dict,
    load_catalog,
)
from ._catalogmodel import Category
from ._client import Client
from ._decide import Decision
from ._errors import (
    CatalogError,
    ConfigError,
    LimitExceeded,
    MeasurementError,
    MeterkitError,
    PlansFileError,
    PlansProblem,
    Problem,
)
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
    "Decision",
    "DerivedField",
    "Expression",
    "ExpressionError",
    "LimitExceeded",
    "MeasurementError",
    "Meter",
    "Metering",
    "MeterkitError",
    "PlansFileError",
    "PlansProblem",
    "Problem",
    "__version__",
    "active_meter",
    "allow",
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
