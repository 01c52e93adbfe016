"""GPU quotas (issue 8): pure accounting and admission decisions.

``teams`` maps namespaces to GPUQuotas, ``ledger`` is the serialised record of admitted claims,
``accounting`` decides whether a claim fits and computes the figures for ``GPUQuota.status``.
The I/O (reading the ledger, writing it under optimistic concurrency, status, ResourceQuota
mirrors) lives in ``dedicated.operator.handlers.quota``.
"""

from .accounting import (
    ADMITTED,
    POOL_NOT_IN_QUOTA,
    QUOTA_EXCEEDED,
    RESERVED_FOR_OTHERS,
    Decision,
    PoolCapacity,
    World,
    decide,
    mirror_limit,
    overcommitted,
    pool_capacity,
    pool_problems,
    quota_usage,
    summaries,
)
from .ledger import ENDPOINT_KIND, QUANTIZED_MODEL_KIND, Claim, LedgerError, ledger_patch, read_ledger
from .selectors import matches
from .teams import QuotaView, TeamMap, conflicts_for_new, fallback_team, resolve_teams

__all__ = [
    "ADMITTED", "ENDPOINT_KIND", "POOL_NOT_IN_QUOTA", "QUANTIZED_MODEL_KIND", "QUOTA_EXCEEDED",
    "RESERVED_FOR_OTHERS", "Claim", "Decision", "LedgerError", "PoolCapacity", "QuotaView", "TeamMap",
    "World", "conflicts_for_new", "decide", "fallback_team", "ledger_patch", "matches", "mirror_limit",
    "overcommitted", "pool_capacity", "pool_problems", "quota_usage", "read_ledger", "resolve_teams",
    "summaries",
]
