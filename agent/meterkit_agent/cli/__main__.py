"""``python -m meterkit_agent.cli``: the same as the ``meterkit`` command."""

from . import main

main()
