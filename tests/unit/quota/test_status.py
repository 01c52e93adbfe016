"""GPUQuota.status from the accounting, and the QuotaAdmitted condition on the objects it governs."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quota_fixtures import claim, nodes, quota, world  # noqa: E402

from dedicated.operator.quota import Decision  # noqa: E402
from dedicated.operator.quota.status import MirrorState, quota_status, with_quota_condition  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 2, tzinfo=UTC)


def _conds(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_ready_quota_figures_and_a_resync_that_changes_nothing() -> None:
    q = quota("ml", {"gpuFamily": "hopper", "guaranteed": 8, "max": 16}, names=["ml-a", "ml-b"])
    w = world([q], [claim("ml-a", "hopper-h100", 8), claim("ml-b", "hopper-h200", 4)], namespaces={"ml-a": {}, "ml-b": {}})
    mirror = MirrorState(enabled=True, limit=None, namespaces=("ml-a", "ml-b"))
    status = quota_status(w, q, None, 3, mirror, now=T0)
    assert _conds(status) == {"Ready": ("True", "Enforced"), "NamespaceConflict": ("False", "NoConflict"),
                              "PoolsResolved": ("True", "PoolsFound"), "Overcommitted": ("False", "WithinCapacity"),
                              "ResourceQuotaMirrored": ("False", "Unbounded")}
    assert (status["used"], status["free"], status["usedGpus"], status["claims"], status["namespaceCount"]) == \
        ("hopper 12/16", "hopper 4", 12, 2, 2)
    assert status["observedGeneration"] == 3
    assert quota_status(w, q, status, 3, mirror, now=T1) == status  # nothing flipped: same bytes


def test_conflicts_missing_pools_and_overcommit_make_it_not_ready() -> None:
    old = quota("old", {"pool": "hopper-h200", "guaranteed": 8}, names=["shared"], created="2026-01-01T00:00:00Z")
    new = quota("new", {"pool": "hopper-h200", "guaranteed": 8}, {"pool": "nope"}, names=["shared", "mine"],
                created="2026-02-01T00:00:00Z")
    w = world([old, new], node_list=nodes(hopper_h200=1))
    s_new = quota_status(w, new, None, 1, None, now=T0)
    assert _conds(s_new)["Ready"] == ("False", "NamespaceClaimedTwice")
    assert _conds(s_new)["PoolsResolved"] == ("False", "PoolNotConfigured")
    assert _conds(s_new)["Overcommitted"] == ("True", "GuaranteesExceedCapacity")
    assert "ResourceQuotaMirrored" not in _conds(s_new)  # a quick refresh keeps the stored one
    assert s_new["namespaces"] == ["mine"]
    s_old = quota_status(w, old, None, 1, MirrorState(True, 8, ("shared",)), now=T0)
    assert _conds(s_old)["Ready"] == ("False", "NamespaceClaimedTwice")
    assert _conds(s_old)["ResourceQuotaMirrored"] == ("True", "Mirrored")


def test_quota_admitted_condition_on_a_refused_object() -> None:
    refused = Decision(False, "QuotaExceeded", "team t uses 8 of 8 hopper GPUs; this quantization Job needs 1", "t")
    status, events = with_quota_condition({"phase": "Pending", "conditions": []}, refused, 2, now=T0)
    assert _conds(status) == {"QuotaAdmitted": ("False", "QuotaExceeded"), "Ready": ("False", "QuotaExceeded")}
    assert status["phase"] == "Pending"
    assert [(e.type, e.reason) for e in events] == [("Warning", "QuotaExceeded")]
    admitted = Decision(True, "Admitted", "team t: 1 GPUs on hopper-h100", "t")
    status2, events2 = with_quota_condition(status, admitted, 2, now=T1)
    assert _conds(status2)["QuotaAdmitted"] == ("True", "Admitted")
    assert [(e.type, e.reason) for e in events2] == [("Normal", "Admitted")]
