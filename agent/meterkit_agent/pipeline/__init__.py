"""The runtime that connects receivers, processors and exporters.

One batch's path, each step a module:

- :mod:`.prepare` parses the frames the receivers read, takes in the SDKs' control records
  and runs the processors;
- :mod:`.deliver` hands the batch to every exporter, retrying transient failures;
- :mod:`.commit` stores what was refused as dead letters, appends the audit journal entry
  and only then advances the :mod:`.checkpoint`;
- :mod:`.retire` removes segments every frame of which is acknowledged.

:mod:`.sender` runs delivery and commit on their own thread, strictly in order, while the
next batch is prepared; :mod:`.drain` holds the shutdown deadline all of them respect;
:mod:`.telemetry` is the agent's own health. :class:`meterkit_agent.agent.Agent` builds
these parts from a configuration and starts and stops them.
"""
