"""Kubernetes label-selector matching, the same semantics as the API server's ``labels.Selector``.

Needed because a GPUQuota selects its team's namespaces by label and the operator resolves that
selector itself (against namespaces it lists) rather than asking the API server once per quota.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..api.gpuquota import LabelSelector


def matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """True when ``labels`` satisfy every ``matchLabels`` pair and every ``matchExpressions`` entry.

    ``NotIn`` and ``DoesNotExist`` also match objects that lack the key, as in Kubernetes.
    """
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions or []:
        present = req.key in labels
        value = labels.get(req.key)
        values = set(req.values or [])
        if req.operator == "In" and not (present and value in values):
            return False
        if req.operator == "NotIn" and present and value in values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True
