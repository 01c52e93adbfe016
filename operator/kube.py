"""Thin typed helpers over the kubernetes client: the only place the operator talks to the API.

Why not the generated per-kind API classes: the handlers deal in plain manifests (dicts, as the
builders produce them), for built-in kinds and our custom resources alike, and need exactly five
verbs: read-or-None, list, create-if-absent, server-side apply with our field manager, and a merge
patch of ``status`` only when it changed. Every request is counted by verb and resource
(``Kube.stats``), so tests and benchmarks can prove that a resync with nothing changed writes
nothing, and report API requests per object.

Idempotence lives here as much as in the planners: ``apply_if_changed`` skips the request when the
live object already carries everything the desired manifest says (and the hash of the last apply),
and ``patch_status`` skips it when the computed status equals the stored one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from kubernetes.client import ApiClient
from kubernetes.utils.quantity import parse_quantity

from .api.crd import GROUP, VERSION

#: Our name in managedFields (server-side apply) and in Events.
FIELD_MANAGER = "dedicated-operator"
#: Hash of the manifest last applied by the operator, kept on the object itself.
APPLIED_HASH_ANNOTATION = f"{GROUP}/applied-hash"
#: Status codes after which the same request may succeed later (conflict, throttling, server trouble).
RETRYABLE_STATUS = frozenset({409, 429, 500, 502, 503, 504})
#: How often one request is repeated when the server answers "wait N seconds", and the longest
#: wait honoured in place (longer ones fail the reconcile, which the queue retries with backoff).
THROTTLE_ATTEMPTS = 4
MAX_RETRY_AFTER_SECONDS = 10.0


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds (the API server sends delta-seconds); ``None`` when absent or odd."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the REST API."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
        if subresource:
            base += f"/{subresource}"
        return base


DEDICATED_ENDPOINTS = Resource(GROUP, VERSION, "dedicatedendpoints", "DedicatedEndpoint")
QUANTIZED_MODELS = Resource(GROUP, VERSION, "quantizedmodels", "QuantizedModel")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
SERVICES = Resource("", "v1", "services", "Service")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
SECRETS = Resource("", "v1", "secrets", "Secret")
PODS = Resource("", "v1", "pods", "Pod")
EVENTS = Resource("", "v1", "events", "Event")
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")
JOBS = Resource("batch", "v1", "jobs", "Job")
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role")
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
PVCS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
PERSISTENT_VOLUMES = Resource("", "v1", "persistentvolumes", "PersistentVolume", namespaced=False)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)

BY_KIND: dict[tuple[str, str], Resource] = {
    (r.api_version, r.kind): r
    for r in (DEDICATED_ENDPOINTS, QUANTIZED_MODELS, DEPLOYMENTS, SERVICES, CONFIGMAPS, SECRETS, PODS, EVENTS,
              SERVICE_ACCOUNTS, JOBS, ROLES, ROLE_BINDINGS, PVCS, PERSISTENT_VOLUMES, NAMESPACES)
}


def resource_of(obj: Mapping[str, Any]) -> Resource:
    try:
        return BY_KIND[(obj["apiVersion"], obj["kind"])]
    except KeyError:
        raise ValueError(f"no REST mapping for {obj.get('apiVersion')}/{obj.get('kind')}") from None


class KubeError(Exception):
    """A failed API request: HTTP status, the API's reason and message."""

    def __init__(self, status: int, reason: str, message: str, method: str, path: str, *,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        #: seconds the server asked us to wait (its Retry-After header), if it said
        self.retry_after = retry_after

    @property
    def conflict(self) -> bool:
        """A 409: the object changed since it was read; read again and redo, no backoff needed."""
        return self.status == 409

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE_STATUS or self.status == 0


@dataclass
class RequestStats:
    """Requests made, by (verb, resource plural[/subresource]). Thread-safe."""

    counts: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

    def add(self, verb: str, what: str) -> None:
        with self._lock:
            self.counts[(verb, what)] += 1

    def snapshot(self) -> Counter:
        with self._lock:
            return Counter(self.counts)

    def writes(self, since: Counter | None = None) -> Counter:
        now = self.snapshot()
        base = since or Counter()
        return Counter({k: v - base.get(k, 0) for k, v in now.items()
                        if k[0] in self.WRITE_VERBS and v - base.get(k, 0) > 0})

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


def canonical_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able object."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- comparison ---------------------------------------------------------------------------------


def _scalar_equal(desired: Any, live: Any) -> bool:
    if desired == live:
        return True
    if isinstance(desired, bool) or isinstance(live, bool):
        return False
    if isinstance(desired, (int, float, str)) and isinstance(live, (int, float, str)):
        if str(desired) == str(live):
            return True
        try:  # the API server canonicalises quantities ("1000m" -> "1", "0.5Gi" -> "512Mi")
            return parse_quantity(desired) == parse_quantity(live)
        except (ValueError, TypeError, ArithmeticError):
            return False
    return False


def contains(live: Any, desired: Any) -> bool:
    """True when ``live`` already says everything ``desired`` says.

    Maps: every desired key is present with a contained value (extra live keys are defaults the
    API server added). Lists: same length, element-wise containment (so a removed container or
    argument is a difference). Scalars: equal, or equal as Kubernetes quantities.
    """
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(k in live and contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(
            contains(lv, dv) for lv, dv in zip(live, desired, strict=True))
    return _scalar_equal(desired, live)


def merge_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch turning ``old`` into ``new`` (``None`` removes a key)."""
    old = old or {}
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif key not in old or before != value:
            patch[key] = copy.deepcopy(value)
    return patch


def with_applied_hash(desired: Mapping[str, Any]) -> dict[str, Any]:
    """``desired`` plus the annotation that records its own hash (computed without it)."""
    out = copy.deepcopy(dict(desired))
    meta = out.setdefault("metadata", {})
    annotations = dict(meta.get("annotations") or {})
    annotations.pop(APPLIED_HASH_ANNOTATION, None)
    meta["annotations"] = annotations
    annotations[APPLIED_HASH_ANNOTATION] = canonical_hash(out)
    return out


def needs_apply(desired_with_hash: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """Whether applying would change anything: the object is missing, was last applied from a
    different manifest (covers removed fields), or someone changed a field we own."""
    if live is None or live.get("metadata", {}).get("deletionTimestamp"):
        return True
    want = desired_with_hash["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
    have = (live.get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH_ANNOTATION)
    return want != have or not contains(live, desired_with_hash)


# --- the client ---------------------------------------------------------------------------------


class Kube:
    """Synchronous, thread-safe access to the API server for the handlers (kopf runs them in threads)."""

    def __init__(self, api_client: ApiClient, field_manager: str = FIELD_MANAGER, *,
                 timeout: float = 30.0) -> None:
        self.api = api_client
        self.field_manager = field_manager
        self.timeout = timeout
        self.stats = RequestStats()
        #: Where Events are posted from: ``None`` posts inline; the runtime sets a one-thread
        #: executor, so Events keep their order but never hold up a reconcile worker.
        self.event_executor: Executor | None = None

    # low level

    def request(self, method: str, path: str, *, body: Any = None, query: Mapping[str, Any] | None = None,
                content_type: str | None = None, what: str = "") -> Any:
        """One API call; returns the decoded JSON body; raises ``KubeError`` on non-2xx.

        A throttled answer (429 with Retry-After, or a 5xx with Retry-After to a read) is waited
        out and sent again here, a few times, as client-go does: the server asked for exactly
        that, and failing the whole reconcile would instead grow the queue's backoff towards
        minutes while the API server is merely busy.
        """
        for attempt in range(1, THROTTLE_ATTEMPTS + 1):
            try:
                return self._request_once(method, path, body=body, query=query, content_type=content_type,
                                          what=what)
            except KubeError as err:
                wait = err.retry_after
                may_repeat = err.status == 429 or (method == "GET" and err.status >= 500)
                if wait is None or not may_repeat or wait > MAX_RETRY_AFTER_SECONDS or attempt == THROTTLE_ATTEMPTS:
                    raise
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _request_once(self, method: str, path: str, *, body: Any, query: Mapping[str, Any] | None,
                      content_type: str | None, what: str) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        url_path = path + (("?" + urlencode(query)) if query else "")
        self.stats.add(method, what or path.rsplit("/", 1)[-1])
        params = self.api.param_serialize(method=method, resource_path=url_path, header_params=headers, body=body,
                                          auth_settings=["BearerToken"])
        try:
            response = self.api.call_api(*params, _request_timeout=self.timeout)
            data = response.read()
        except Exception as err:  # connection refused/reset, timeouts: retryable
            status = getattr(err, "status", 0) or 0
            raise KubeError(status, type(err).__name__, str(err)[:500], method, path) from None
        status = response.status
        text = data.decode("utf-8", "replace") if data else ""
        if not 200 <= status < 300:
            reason, message = str(status), text[:1000]
            try:
                decoded = json.loads(text)
                reason, message = decoded.get("reason") or reason, decoded.get("message") or message
            except (ValueError, AttributeError):
                pass
            raise KubeError(status, reason, message, method, path,
                            retry_after=_retry_after_seconds(response.headers.get("Retry-After")))
        return json.loads(text) if text else None

    @staticmethod
    def _what(res: Resource, subresource: str | None = None) -> str:
        return f"{res.plural}/{subresource}" if subresource else res.plural

    # reads

    def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or ``None`` when it does not exist."""
        try:
            return self.request("GET", res.path(namespace, name), what=self._what(res))
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    def list(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        query = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
        items: list[dict[str, Any]] = []
        cont: str | None = None
        while True:
            q = dict(query, limit=500, **({"continue": cont} if cont else {}))
            page = self.request("GET", res.path(namespace), query=q, what=self._what(res))
            items += page.get("items") or []
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                return items

    def raw_get(self, path: str) -> str:
        """A non-JSON GET (e.g. ``/metrics``), for tests and benchmarks."""
        params = self.api.param_serialize(method="GET", resource_path=path, header_params={"Accept": "text/plain"},
                                          auth_settings=["BearerToken"])
        response = self.api.call_api(*params, _request_timeout=self.timeout)
        return response.read().decode()

    # writes

    def create(self, obj: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``obj`` unless it exists: ``(object, True)`` if this call created it, else the
        existing object and ``False``. The name is the idempotency key, so a retried or duplicated
        call (operator restart, resync) never makes a second object."""
        res = resource_of(obj)
        ns = obj["metadata"].get("namespace")
        try:
            return self.request("POST", res.path(ns), body=obj, query={"fieldManager": self.field_manager},
                                what=self._what(res)), True
        except KubeError as err:
            if err.status != 409 or err.reason != "AlreadyExists":
                raise
        existing = self.get(res, ns, obj["metadata"]["name"])
        if existing is None:  # deleted between the two calls: let the caller retry
            raise KubeError(409, "Conflict", "object vanished right after AlreadyExists", "POST", res.path(ns))
        return existing, False

    def apply(self, obj: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply with our field manager (``force``: we own what we declare)."""
        res = resource_of(obj)
        meta = obj["metadata"]
        query = {"fieldManager": self.field_manager, "force": "true" if force else "false"}
        return self.request("PATCH", res.path(meta.get("namespace"), meta["name"]), body=obj, query=query,
                            content_type="application/apply-patch+yaml", what=self._what(res))

    def apply_if_changed(self, desired: Mapping[str, Any],
                         live: Mapping[str, Any] | None) -> tuple[dict[str, Any], bool]:
        """Apply ``desired`` only when ``live`` differs; returns ``(object, applied)``."""
        stamped = with_applied_hash(desired)
        if not needs_apply(stamped, live):
            return dict(live), False  # type: ignore[arg-type]
        return self.apply(stamped), True

    def merge_patch(self, res: Resource, namespace: str | None, name: str, patch: Mapping[str, Any],
                    subresource: str | None = None) -> dict[str, Any]:
        return self.request("PATCH", res.path(namespace, name, subresource), body=patch,
                            content_type="application/merge-patch+json", what=self._what(res, subresource))

    def patch_status(self, res: Resource, obj: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
        """Write ``status`` through the status subresource if it differs from the stored one.

        The patch carries the object's resourceVersion, so a status computed from a stale read
        is refused (409) and recomputed instead of overwriting a newer one.
        """
        old = obj.get("status") or {}
        patch = merge_patch(old, status)
        if not patch:
            return False
        meta = obj["metadata"]
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": patch}
        self.merge_patch(res, meta.get("namespace"), meta["name"], body, subresource="status")
        return True

    def delete(self, res: Resource, namespace: str | None, name: str, *, propagation: str = "Background") -> bool:
        try:
            self.request("DELETE", res.path(namespace, name), body={"propagationPolicy": propagation},
                         what=self._what(res))
            return True
        except KubeError as err:
            if err.status == 404:
                return False
            raise

    def post_event(self, obj: Mapping[str, Any], *, type_: str, reason: str, message: str,
                   component: str = FIELD_MANAGER, instance: str = "") -> None:
        """A core/v1 Event about ``obj`` (what ``kubectl describe`` shows). Never raises: an Event
        is a courtesy, and losing one must not fail a reconcile."""
        if self.event_executor is not None:
            try:
                self.event_executor.submit(self._post_event, dict(obj), type_, reason, message, component, instance)
                return
            except RuntimeError:  # executor shut down (operator stopping): post inline
                pass
        self._post_event(obj, type_, reason, message, component, instance)

    def _post_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str, component: str,
                    instance: str) -> None:
        meta = obj["metadata"]
        stamp = datetime.now(UTC)
        now = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        unique = f"{meta.get('uid', '')}{stamp.isoformat()}{reason}{threading.get_ident()}"
        name = f"{meta['name'][:200]}.{hashlib.sha256(unique.encode()).hexdigest()[:12]}"
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": meta.get("namespace") or "default"},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                               "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": component}, "reportingComponent": component,
            "reportingInstance": instance or component,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.request("POST", EVENTS.path(event["metadata"]["namespace"]), body=event, what="events")
        except KubeError:
            pass


def owner_names(obj: Mapping[str, Any], kind: str) -> Iterable[str]:
    """Names of the controlling owners of ``obj`` that are of ``kind`` (our group)."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == kind and str(ref.get("apiVersion", "")).startswith(GROUP + "/"):
            yield ref["name"]
