"""kopf handlers, bound to one ``OperatorContext`` in a fresh registry (no module-level state).

Layout: ``endpoint`` and ``quantizedmodel`` hold the reconcilers and their watches, ``models``
the model-resolution I/O, ``queue`` the reconcile queue, ``context`` what they share. Pure
planning lives in ``dedicated.operator.reconcile``.
"""

from __future__ import annotations

from typing import Any

import kopf

from . import admission, endpoint, quantizedmodel, quota
from .context import ENDPOINT, QUANTIZED_MODEL, OperatorContext


def build_registry(ctx: OperatorContext, login: Any = None) -> kopf.OperatorRegistry:
    """A kopf registry with every handler of the operator, bound to ``ctx``.

    ``login``: a kopf login function (returns ``kopf.ConnectionInfo``) for this operator's
    credentials; the runtime passes one built from the same kubeconfig as ``ctx.kube``.
    """
    registry = kopf.OperatorRegistry()
    endpoint.register(registry, ctx)
    quantizedmodel.register(registry, ctx)
    quota.register(registry, ctx)  # GPU quotas: ledger, GPUQuota status, ResourceQuota mirrors (issue 8)
    admission.register(registry, ctx)  # admission webhooks (issue 8; off unless DEDICATED_WEBHOOK_MODE)
    if login is not None:
        kopf.on.login(registry=registry)(login)

    @kopf.on.probe(id="queue", registry=registry)
    def queue_probe(**_: Any) -> dict[str, Any]:
        stats = ctx.queue.stats
        requests: dict[str, int] = {}
        for (verb, _what), n in ctx.kube.stats.snapshot().items():
            requests[verb] = requests.get(verb, 0) + n
        return {"depth": ctx.queue.depth(), "reconciles": dict(stats.reconciles), "failures": dict(stats.failures),
                "active": bool(ctx.gate()), "poolsError": ctx.pools.error, "requests": requests,
                "busySeconds": round(stats.busy_seconds, 3)}

    return registry


__all__ = ["ENDPOINT", "QUANTIZED_MODEL", "OperatorContext", "build_registry"]
