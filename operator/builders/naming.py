"""Names, labels, selectors and owner references of the objects built for an endpoint.

Label values are at most 63 characters and Service names must be DNS-1035 labels, while an
endpoint's name may be a 253-character DNS subdomain: long or dotted names are shortened with a
stable hash suffix, so the same endpoint always maps to the same names.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api.crd import API_VERSION, DEDICATED_ENDPOINT, GROUP

ENDPOINT_LABEL = f"{GROUP}/endpoint"
POOL_LABEL = f"{GROUP}/pool"
SPEC_HASH_ANNOTATION = f"{GROUP}/spec-hash"
COMPONENT = "serving"
MANAGED_BY = "dedicated-operator"
HTTP_PORT = 8000

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def label_value(name: str) -> str:
    """``name`` if it is a valid label value, else a shortened form with a stable hash."""
    if len(name) <= 63:
        return name
    return f"{name[:54].rstrip('-.')}-{_short_hash(name)}"


def service_name(endpoint: str) -> str:
    """A DNS-1035 label (what Services need) derived from the endpoint name."""
    if len(endpoint) <= 63 and _DNS1035.match(endpoint):
        return endpoint
    cleaned = re.sub(r"[^a-z0-9-]", "-", endpoint).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"ep-{cleaned}"
    return f"{cleaned[:54].rstrip('-')}-{_short_hash(endpoint)}"


def selector_labels(endpoint: str) -> dict[str, str]:
    """Labels the Deployment selects on: immutable for the endpoint's lifetime."""
    return {"app.kubernetes.io/component": COMPONENT, ENDPOINT_LABEL: label_value(endpoint)}


def selector_string(endpoint: str) -> str:
    """The label selector as a string, for ``status.selector`` (scale subresource, HPAs)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(endpoint).items()))


def common_labels(endpoint: str, pool: str | None = None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": label_value(endpoint),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "dedicated-endpoints",
        **selector_labels(endpoint),
    }
    if pool:
        labels[POOL_LABEL] = pool
    return dict(sorted(labels.items()))


def endpoint_url(endpoint: str, namespace: str) -> str:
    """In-cluster OpenAI-compatible base URL."""
    return f"http://{service_name(endpoint)}.{namespace}.svc:{HTTP_PORT}/v1"


@dataclass(frozen=True)
class Owner:
    """The owning custom resource, for ``ownerReferences`` (garbage collection on delete)."""

    name: str
    uid: str
    api_version: str = API_VERSION
    kind: str = DEDICATED_ENDPOINT.kind

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(name=meta["name"], uid=meta["uid"], api_version=body.get("apiVersion", API_VERSION),
                   kind=body.get("kind", DEDICATED_ENDPOINT.kind))

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}
