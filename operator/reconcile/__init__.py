"""Pure planning for the handlers: (spec + observed facts) -> desired objects + status + Events.

No API calls and no clock (``now`` is a parameter): every function here is unit-tested without a
cluster, and the kopf handlers in ``dedicated.operator.handlers`` stay thin.
"""
