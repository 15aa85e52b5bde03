"""The audit trail: the keyed, chained journal of every batch the agent delivered or
dead-lettered (:mod:`.journal`; its verification against the backend's anchor in
:mod:`.chain`), reconciliation of what SDKs recorded against what the agent delivered and
what the backend holds, measurement by measurement (:mod:`.reconcile`: the journal's pass
in :mod:`.journalview`, the backend's side in :mod:`.backends`, naming each differing uid
in :mod:`.drilldown` with the originals of :mod:`.originals`; :mod:`.repair` re-sends what
is missing), and its HTML report (:mod:`.report`)."""
