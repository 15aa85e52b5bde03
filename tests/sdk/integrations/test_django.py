"""The Django middleware, through Django's test client, with minimal settings made here."""

from __future__ import annotations

from typing import Any

import django
from django.conf import settings
from django.http import Http404, HttpResponse
from django.test import Client
from django.urls import path

import meterkit
from meterkit.testing import Captured

from .conftest import by_meter

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["testserver"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=["meterkit.integrations.django.MeterkitMiddleware"],
    METERKIT_DJANGO={
        "meter": "api_calls",
        "account": "X-Account",
        "measure": {"calls": 1},
        "outcome": "outcome",
        "status": "status",
    },
    INSTALLED_APPS=[],
    LOGGING_CONFIG=None,
)
django.setup()


def ok(request: Any) -> HttpResponse:
    meterkit.record("downloads", measure={"bytes": 3})
    return HttpResponse("ok")


def missing(request: Any) -> HttpResponse:
    raise Http404


def crash(request: Any) -> HttpResponse:
    raise RuntimeError("boom")


def limited(request: Any) -> HttpResponse:
    raise meterkit.LimitExceeded(meterkit.Decision(False, 0, 59.2, "hard cap reached", False, "test"))


urlpatterns = [path("ok", ok), path("missing", missing), path("crash", crash), path("limited", limited)]


def test_django_requests_are_metered_in_one_line(captured: Captured) -> None:
    client = Client(raise_request_exception=False)
    statuses = [client.get(f"/{p}", headers={"X-Account": "acme"}).status_code for p in ("ok", "missing", "crash")]
    assert statuses == [200, 404, 500]
    answer = client.get("/limited", headers={"X-Account": "acme"})
    assert (answer.status_code, answer["Retry-After"]) == (429, "60")
    calls = by_meter(captured, "api_calls")
    assert [(m["account"], m["other"]) for m in calls] == [
        ("acme", {"outcome": "ok", "status": "200"}),
        ("acme", {"outcome": "client_error", "status": "404"}),
        ("acme", {"outcome": "error", "status": "500"}),
        ("acme", {"outcome": "limited", "status": "429"}),
    ]
    assert [m["account"] for m in by_meter(captured, "downloads")] == ["acme"]
