"""Exporters: where delivered measurements go, one module each.

An exporter's ``export(records)`` returns the measurements the backend refused for good
and raises :class:`~meterkit_agent.component.RetryLater` for anything transient. What
they share (sessions, retry rules, request chunks, ``Idempotency-Key``) is in
:mod:`.exporterhelper`.

To add one: a module here defining ``FACTORY`` (its configuration model and its
constructor), its tests under ``tests/agent/exporters/``, and one line below.
"""

#: exporter type → the module that defines its ``FACTORY``
EXPORTERS: dict[str, str] = {
    "m3ter": "meterkit_agent.exporters.m3ter",
    "http": "meterkit_agent.exporters.http",
    "openmeter": "meterkit_agent.exporters.openmeter",
    "stripe": "meterkit_agent.exporters.stripe",
    "ledger": "meterkit_agent.exporters.ledger",
    "file": "meterkit_agent.exporters.file",
}
