"""The idempotence helpers of ``dedicated.operator.kube``: when an apply or a status patch would
change nothing, the operator must not send it (a resync with nothing changed writes nothing)."""

from __future__ import annotations

import copy

from hypothesis import given, strategies as st

from dedicated.operator.kube import (
    APPLIED_HASH_ANNOTATION,
    DEPLOYMENTS,
    QUANTIZED_MODELS,
    contains,
    merge_patch,
    needs_apply,
    resource_of,
    with_applied_hash,
)


def deployment() -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "ep", "namespace": "ns", "labels": {"a": "b"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "vllm", "args": ["--x", "1"],
                 "resources": {"requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}}}]}}}}


def as_stored(obj: dict) -> dict:
    """What the API server returns: defaults added, quantities canonicalised, status present."""
    live = copy.deepcopy(obj)
    live["metadata"].update(uid="u", resourceVersion="7", generation=1, creationTimestamp="2026-01-01T00:00:00Z")
    c = live["spec"]["template"]["spec"]["containers"][0]
    c.update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log")
    c["resources"]["requests"]["cpu"] = "8000m" if False else "8"
    live["spec"].update(revisionHistoryLimit=10, progressDeadlineSeconds=600)
    live["status"] = {"replicas": 2}
    return live


def test_unchanged_object_needs_no_apply() -> None:
    desired = with_applied_hash(deployment())
    assert not needs_apply(desired, as_stored(desired))
    assert needs_apply(desired, None)


def test_quantities_compare_by_value() -> None:
    desired = with_applied_hash(deployment())
    live = as_stored(desired)
    live["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] = "65536Mi"
    assert not needs_apply(desired, live)
    live["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] = "32Gi"
    assert needs_apply(desired, live)


def test_drift_and_removed_fields_are_detected() -> None:
    desired = with_applied_hash(deployment())
    live = as_stored(desired)
    live["spec"]["replicas"] = 5  # someone scaled the Deployment by hand
    assert needs_apply(desired, live)
    # a field removed from the manifest: the live object still has it, only the hash tells
    smaller = deployment()
    del smaller["metadata"]["labels"]
    assert needs_apply(with_applied_hash(smaller), as_stored(desired))
    # a list element removed (an argument) is a difference even though the rest is contained
    shorter = deployment()
    shorter["spec"]["template"]["spec"]["containers"][0]["args"] = ["--x"]
    assert not contains(as_stored(desired), with_applied_hash(shorter))


def test_applied_hash_ignores_its_own_annotation() -> None:
    a = with_applied_hash(deployment())
    b = with_applied_hash(a)
    assert a == b and a["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                           max_leaves=12)


def apply_merge(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = apply_merge(out.get(k), v)
    return out


def strip_none(value):
    if isinstance(value, dict):
        return {k: strip_none(v) for k, v in value.items() if v is not None}
    return value


@given(st.dictionaries(st.text(max_size=4), json_values, max_size=5),
       st.dictionaries(st.text(max_size=4), json_values, max_size=5))
def test_merge_patch_turns_old_into_new(old, new) -> None:
    new = strip_none(new)  # status never stores nulls
    patch = merge_patch(old, new)
    assert apply_merge(old, patch) == new
    assert merge_patch(new, new) == {}


def test_rest_mapping() -> None:
    assert resource_of(deployment()) is DEPLOYMENTS
    assert QUANTIZED_MODELS.path("ns", "x", "status") == "/apis/llm.dedicated.dev/v1alpha1/namespaces/ns/quantizedmodels/x/status"
    assert DEPLOYMENTS.path("a b") == "/apis/apps/v1/namespaces/a%20b/deployments"
