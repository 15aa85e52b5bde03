"""Processors: plain callables from a batch of measurements to (kept, rejected), run in
the pipeline's order. ``batch`` builds no callable: it configures the delivery worker.

To add one: a module here defining ``FACTORY``, its tests under
``tests/agent/processors/``, and one line below.
"""

#: processor type → the module that defines its ``FACTORY``
PROCESSORS: dict[str, str] = {
    "validate": "meterkit_agent.processors.validate",
    "derive": "meterkit_agent.processors.derive",
    "enrich": "meterkit_agent.processors.enrich",
    "batch": "meterkit_agent.processors.batch",
}
