"""The audit trail: the hash-chained journal of every batch the agent delivered or
dead-lettered (:mod:`.journal`), reconciliation of what SDKs recorded against what the
agent delivered and what the backend holds (:mod:`.reconcile`), and its HTML report
(:mod:`.report`)."""
