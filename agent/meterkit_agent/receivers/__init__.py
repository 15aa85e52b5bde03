"""Receivers: where measurements come from, one module each.

``spool`` tails the spools the SDKs write; ``http`` (meterkit's JSON API) and ``otlp``
(OTLP/HTTP logs) accept measurements over the network and append them to a spool of the
agent's own, which is tailed the same way: the spool is the pipeline's only queue.

To add one: a module here defining ``FACTORY`` (its configuration model and a
``create(cid, cfg, host)`` that builds it and names the spool to tail), its tests under
``tests/agent/receivers/``, and one line below.
"""

#: receiver type → the module that defines its ``FACTORY``
RECEIVERS: dict[str, str] = {
    "spool": "meterkit_agent.receivers.spool",
    "http": "meterkit_agent.receivers.http",
    "otlp": "meterkit_agent.receivers.otlp",
}
