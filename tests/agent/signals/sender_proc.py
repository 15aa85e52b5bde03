"""A webhook sender in a process of its own, for the test that kills one mid-send:
``python -m tests.agent.signals.sender_proc <database url> <settings JSON>``."""

from __future__ import annotations

import sys
import threading

from meterkit_agent.ledger.schema import make_engine
from meterkit_agent.signals import WebhookSender, WebhooksSettings

if __name__ == "__main__":
    sender = WebhookSender(make_engine(sys.argv[1]), WebhooksSettings.model_validate_json(sys.argv[2]))
    sender.start()
    print("sender started", flush=True)
    threading.Event().wait()  # until killed
