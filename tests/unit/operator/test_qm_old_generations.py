"""Removing an earlier generation's Job and its ConfigMap/RBAC survives an operator killed half-way."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dedicated.operator.handlers.quantizedmodel import _delete_old_generations
from dedicated.operator.kube import CONFIGMAPS, JOBS, ROLE_BINDINGS, ROLES, SERVICE_ACCOUNTS

UID = "qm-uid"
KINDS = (CONFIGMAPS, SERVICE_ACCOUNTS, ROLES, ROLE_BINDINGS, JOBS)  # the order a generation is created in


class Killed(Exception):
    """The operator process dying between two API calls."""


class StubKube:
    """Just enough of :class:`dedicated.operator.kube.Kube`: objects by (kind, name), deletes counted."""

    def __init__(self, objects: set, kill_after_deletes: int | None = None) -> None:
        self.objects = objects
        self.kill_after = kill_after_deletes
        self.deletes: list = []

    def list(self, res, namespace, label_selector=""):
        assert "!=2" in label_selector
        return [{"metadata": {"name": name, "ownerReferences": [{"uid": UID}]}}
                for kind, name in self.objects if kind is res and name.endswith("-1")]

    def delete(self, res, namespace, name, propagation="Background"):
        if self.kill_after is not None and len(self.deletes) >= self.kill_after:
            raise Killed()
        self.deletes.append((res, name))
        existed = (res, name) in self.objects
        self.objects.discard((res, name))
        return existed


def _world() -> set:
    return {(kind, f"q0-quantize-{gen}") for kind in KINDS for gen in (1, 2)}


@pytest.mark.parametrize("kill_after", range(len(KINDS)))
def test_a_kill_at_any_point_leaves_nothing_of_the_old_generation_after_the_next_pass(kill_after):
    objects = _world()
    with pytest.raises(Killed):
        _delete_old_generations(SimpleNamespace(kube=StubKube(objects, kill_after)), "ns", "q0", UID, 2)
    _delete_old_generations(SimpleNamespace(kube=StubKube(objects)), "ns", "q0", UID, 2)  # the restarted operator
    assert objects == {(kind, "q0-quantize-2") for kind in KINDS}


def test_the_job_is_deleted_last():
    kube = StubKube(_world())
    _delete_old_generations(SimpleNamespace(kube=kube), "ns", "q0", UID, 2)
    assert kube.deletes[-1] == (JOBS, "q0-quantize-1")
    assert {d[0] for d in kube.deletes[:-1]} == {CONFIGMAPS, ROLE_BINDINGS, ROLES, SERVICE_ACCOUNTS}


@pytest.mark.parametrize("created", range(1, len(KINDS)))
def test_a_generation_killed_before_its_job_existed_is_removed_too(created):
    """The operator died while applying generation 1's objects (the first ``created`` of them, no Job)."""
    objects = {(kind, "q0-quantize-1") for kind in KINDS[:created]} | {(kind, "q0-quantize-2") for kind in KINDS}
    _delete_old_generations(SimpleNamespace(kube=StubKube(objects)), "ns", "q0", UID, 2)
    assert objects == {(kind, "q0-quantize-2") for kind in KINDS}
