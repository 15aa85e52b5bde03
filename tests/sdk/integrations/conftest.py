from __future__ import annotations

from collections.abc import Iterator

import pytest

import meterkit
from meterkit.testing import Captured, capture_measurements

#: The meter every integration test records: what a service would declare for its requests.
CATALOG = meterkit.catalog_from_dict(
    {
        "meters": [
            {
                "code": "api_calls",
                "name": "API calls",
                "data_fields": [
                    {"code": "calls", "name": "Calls", "category": "MEASURE"},
                    {"code": "seconds", "name": "Seconds", "category": "MEASURE"},
                    {"code": "outcome", "name": "Outcome", "category": "OTHER"},
                    {"code": "status", "name": "Status", "category": "OTHER"},
                    {"code": "endpoint", "name": "Endpoint", "category": "WHAT"},
                ],
            },
            {
                "code": "downloads",
                "name": "Downloads",
                "data_fields": [{"code": "bytes", "name": "Bytes", "category": "MEASURE"}],
            },
        ]
    }
)


@pytest.fixture
def captured() -> Iterator[Captured]:
    with capture_measurements(CATALOG) as found:
        yield found


def by_meter(captured: Captured, code: str) -> list[dict[str, object]]:
    return [m for m in captured.measurements if m["meter"] == code]
