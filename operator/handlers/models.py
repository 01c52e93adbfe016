"""Finding out what a model is, for the planner: the I/O half of model resolution.

Sources, in the order the handler tries them:

* ``spec.model.hub``: the Hub API (config.json + safetensors headers; no weights). The token, if
  the spec names a Secret, is read from it in memory only. Answers are cached (successes for an
  hour, failures for a minute, after which the endpoint is reconciled again).
* a volume (``spec.model.volume``, or a QuantizedModel's ``pvc://`` artifact): a model-facts
  ConfigMap in the namespace (``dedicated model-facts``), else ``<volume root>/<claim>/<path>``
  when the operator was started with ``--volume-root``; otherwise the endpoint says exactly that.
* ``spec.model.quantizedModelRef``: the QuantizedModel's status; the endpoint waits (condition
  ``ModelReady=False/WaitingForQuantizedModel``) until it has Succeeded for its current
  generation, then resolves its artifact as above.

Profiles are cached by the identity of what they were computed from (ConfigMap uid +
resourceVersion, directory + mtimes, Hub repo + revision), so a resync re-plans in microseconds.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from ..api.common import SecretKeyRef
from ..api.endpoint import DedicatedEndpointSpec, EndpointReason as R
from ..api.quantizedmodel import Artifact, QuantizedModelPhase
from ..builders.model_source import resolve_model
from ..builders.naming import label_value
from ..kube import CONFIGMAPS, QUANTIZED_MODELS, SECRETS
from ..modelfacts import FACTS_CLAIM_LABEL, FACTS_LABEL, FactsLocation, checkpoint_from_configmap, matches
from ..reconcile.endpoint import ModelState
from ..vram.checkpoint import read_hub, read_local
from ..vram.errors import CheckpointError
from ..vram.profile import ModelProfile, profile_checkpoint
from .context import OperatorContext

#: Artifact locations as the quantize Job reports them (the builders validate them again).
_PVC_URI = re.compile(r"^pvc://(?P<claim>[^/]+)(/(?P<path>.+))?$")
_HF_URI = re.compile(r"^hf://(?P<repo>[^@]+)(@(?P<rev>.+))?$")


class Unavailable(Exception):
    """The model cannot be used now: a condition reason and message; ``retry_after`` for the queue."""

    def __init__(self, reason: str, message: str, *, waiting: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.waiting = waiting
        self.retry_after = retry_after


def read_secret_key(ctx: OperatorContext, namespace: str, ref: SecretKeyRef, what: str) -> str:
    """The value of a Secret key, kept in memory only; a missing Secret or key is SecretNotFound."""
    secret = ctx.kube.get(SECRETS, namespace, ref.name)
    if secret is None:
        raise Unavailable(R.SECRET_NOT_FOUND, f"{what}: Secret {ref.name!r} not found in namespace {namespace}")
    data = secret.get("data") or {}
    if ref.key not in data:
        raise Unavailable(R.SECRET_NOT_FOUND, f"{what}: Secret {ref.name!r} has no key {ref.key!r}")
    import base64

    try:
        return base64.b64decode(data[ref.key]).decode().strip()
    except (ValueError, UnicodeDecodeError):
        raise Unavailable(R.SECRET_NOT_FOUND, f"{what}: Secret {ref.name!r} key {ref.key!r} is not valid text") from None


def hub_profile(ctx: OperatorContext, repo: str, revision: str | None, token: str | None) -> ModelProfile:
    token_id = hashlib.sha256(token.encode()).hexdigest()[:12] if token else ""
    key = ("hub", repo, revision, token_id)
    def compute() -> ModelProfile | CheckpointError:
        try:
            return profile_checkpoint(read_hub(repo, revision, token=token, client=ctx.hub_client))
        except CheckpointError as err:
            return err

    cached = ctx.hub.get(key)
    if cached is None:
        cached = ctx.hub.get_or_compute(key, compute, ctx.options.hub_success_ttl)
        if isinstance(cached, CheckpointError):  # failures are retried sooner than successes expire
            ctx.hub.put(key, cached, ctx.options.hub_failure_ttl)
    if isinstance(cached, CheckpointError):
        raise Unavailable(cached.reason, cached.message, retry_after=ctx.options.hub_failure_ttl)
    return cached


def volume_profile(ctx: OperatorContext, namespace: str, location: FactsLocation) -> ModelProfile:
    selector = f"{FACTS_LABEL}=true,{FACTS_CLAIM_LABEL}={label_value(location.claim_name)}"
    found = [cm for cm in ctx.kube.list(CONFIGMAPS, namespace, label_selector=selector) if matches(cm, location)]
    if len(found) > 1:
        names = ", ".join(sorted(cm["metadata"]["name"] for cm in found))
        raise Unavailable(R.CONFIG_UNREADABLE, f"{len(found)} model-facts ConfigMaps describe "
                                               f"{location.describe()} ({names}); keep one")
    if found:
        cm = found[0]
        key = ("cm", cm["metadata"]["uid"], cm["metadata"]["resourceVersion"])

        def from_configmap() -> ModelProfile | CheckpointError:
            try:
                return profile_checkpoint(checkpoint_from_configmap(cm))
            except CheckpointError as err:
                return err

        cached = ctx.profiles.get_or_compute(key, from_configmap, 24 * 3600)
        if isinstance(cached, CheckpointError):
            raise Unavailable(cached.reason, cached.message)
        return cached
    root = ctx.options.volume_root
    if root is not None:
        directory = Path(root) / location.claim_name / location.path if location.path else Path(root) / location.claim_name
        if directory.is_dir():
            stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                          for p in sorted(directory.glob("*.json")) + sorted(directory.glob("*.safetensors")))
            key = ("dir", str(directory), stamp)

            def from_directory() -> ModelProfile | CheckpointError:
                try:
                    return profile_checkpoint(read_local(directory))
                except CheckpointError as err:
                    return err

            cached = ctx.profiles.get_or_compute(key, from_directory, 3600)
            if isinstance(cached, CheckpointError):
                raise Unavailable(cached.reason, cached.message)
            return cached
    hint = (f"create them with `dedicated model-facts <checkpoint dir> --claim {location.claim_name}"
            + (f" --path {location.path}" if location.path else "") + f" | kubectl apply -n {namespace} -f -`")
    raise Unavailable(R.CONFIG_UNREADABLE, f"no model facts for {location.describe()}: the operator does not "
                                           f"mount user volumes; {hint}")


def _qm_state(ctx: OperatorContext, namespace: str, qm_name: str) -> tuple[dict[str, Any], Artifact, SecretKeyRef | None]:
    qm = ctx.kube.get(QUANTIZED_MODELS, namespace, qm_name)
    if qm is None:
        raise Unavailable(R.QUANTIZED_MODEL_NOT_FOUND, f"QuantizedModel {qm_name!r} does not exist in namespace {namespace}")
    status = qm.get("status") or {}
    phase = status.get("phase")
    gen = (qm.get("metadata") or {}).get("generation")
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    if phase == QuantizedModelPhase.FAILED and status.get("observedGeneration") == gen:
        raise Unavailable(R.QUANTIZED_MODEL_FAILED, f"QuantizedModel {qm_name} failed: "
                                                    f"{ready.get('reason', '')}: {ready.get('message', '')}".strip())
    if phase != QuantizedModelPhase.SUCCEEDED or status.get("observedGeneration") != gen or not status.get("artifact"):
        summary = (status.get("progress") or {}).get("summary")
        where = f"{phase or 'Pending'}" + (f", {summary}" if summary else "")
        raise Unavailable(R.WAITING_FOR_QUANTIZED_MODEL,
                          f"waiting for QuantizedModel {qm_name} to succeed (now {where})", waiting=True)
    try:
        artifact = Artifact.model_validate(status["artifact"])
    except Exception as err:  # noqa: BLE001 (a malformed status is reported, not raised)
        raise Unavailable(R.CONFIG_UNREADABLE, f"QuantizedModel {qm_name} has an unreadable artifact: {err}") from None
    spec = qm.get("spec") or {}
    token_ref = None
    out_hub = (spec.get("output") or {}).get("hub")
    if out_hub and out_hub.get("tokenSecretRef"):
        token_ref = SecretKeyRef.model_validate(out_hub["tokenSecretRef"])
    return qm, artifact, token_ref


def _display(spec: DedicatedEndpointSpec) -> str:
    m = spec.model
    if m.served_model_name:
        return m.served_model_name
    if m.hub is not None:
        return m.hub.repo + (f"@{m.hub.revision}" if m.hub.revision else "")
    if m.volume is not None:
        return f"pvc://{m.volume.claim_name}/{m.volume.path or ''}".rstrip("/")
    return f"quantizedmodel/{m.quantized_model_ref.name}"


def model_state(ctx: OperatorContext, namespace: str, name: str, spec: DedicatedEndpointSpec) -> tuple[ModelState, float | None]:
    """Resolve ``spec.model`` into a ModelState, and when to look again (None: on events only)."""
    m = spec.model
    display = _display(spec)
    try:
        if m.hub is not None:
            token = read_secret_key(ctx, namespace, m.hub.token_secret_ref, "spec.model.hub.tokenSecretRef") \
                if m.hub.token_secret_ref else None
            profile = hub_profile(ctx, m.hub.repo, m.hub.revision, token)
            resolved = resolve_model(m, endpoint_name=name, checkpoint_bytes=profile.parts.total)
            return ModelState(display, profile, resolved, message=f"{display}: planned from the Hub API"), None
        if m.volume is not None:
            location = FactsLocation(m.volume.claim_name, m.volume.path or "")
            profile = volume_profile(ctx, namespace, location)
            resolved = resolve_model(m, endpoint_name=name, checkpoint_bytes=profile.parts.total)
            return ModelState(display, profile, resolved, message=f"{location.describe()} ({profile.source})"), None
        qm_name = m.quantized_model_ref.name
        _qm, artifact, token_ref = _qm_state(ctx, namespace, qm_name)
        if pvc := _PVC_URI.match(artifact.location):
            profile = volume_profile(ctx, namespace, FactsLocation(pvc["claim"], pvc["path"] or ""))
        elif hub := _HF_URI.match(artifact.location):
            token = read_secret_key(ctx, namespace, token_ref, f"QuantizedModel {qm_name} output token") \
                if token_ref else None
            profile = hub_profile(ctx, hub["repo"], hub["rev"] or artifact.revision, token)
        else:
            raise Unavailable(R.CONFIG_UNREADABLE, f"QuantizedModel {qm_name} artifact location "
                                                   f"{artifact.location!r} is neither pvc:// nor hf://")
        resolved = resolve_model(m, endpoint_name=name, artifact=artifact, artifact_token=token_ref,
                                 checkpoint_bytes=profile.parts.total)
        return ModelState(f"{display} ({artifact.format})", profile, resolved,
                          message=f"QuantizedModel {qm_name} published {artifact.location}"), None
    except Unavailable as err:
        return ModelState(display, reason=err.reason, message=err.message, waiting=err.waiting), err.retry_after
    except CheckpointError as err:
        return ModelState(display, reason=err.reason, message=err.message), None
    except ValueError as err:  # resolve_model refusing a location or name
        return ModelState(display, reason=R.CONFIG_UNREADABLE, message=str(err)), None
