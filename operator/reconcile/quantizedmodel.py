"""QuantizedModel: (spec + observed Job) -> the generation's Job objects + status + Events. Pure.

One Job per generation, named ``<qm>-quantize-<generation>``: the handler *creates* it (never
updates it), so a restart or a resync finds the Job it made instead of making a second one, and a
spec change (a new ``metadata.generation``) gets a new Job while the old generation's is removed.
A generation whose status already says Succeeded/Failed is never started again, even if its Job
was deleted since.

Progress and result come from the Job's annotations, written by the program (docs: the
operator/Job contract): ``llm.dedicated.dev/progress`` while it runs, ``llm.dedicated.dev/result``
once, last, on success. The result annotation is authoritative for success (it is written after
everything else finished). Failures come from the Job's conditions and the failed pod's
termination message ``<Reason>: <message>``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..api.conditions import ConditionStatus
from ..api.quantizedmodel import (
    Artifact,
    Progress,
    Quality,
    QuantizedModelConditionType as C,
    QuantizedModelPhase as P,
    QuantizedModelReason as R,
    QuantizedModelSpec,
)
from ..builders.quantize_job import (
    JobOwner,
    JobPlacement,
    QuantizeJobObjects,
    build_quantize_job,
    job_name,
)
from ..images import ImageConfig
from ..pools import NodePool, PoolConfig
from ..vram.memory import GIB
from ..vram.profile import ModelProfile
from .common import EventSpec, Want, apply_conditions, condition_dicts, stored_conditions, transition_events

PROGRESS_ANNOTATION = "llm.dedicated.dev/progress"
RESULT_ANNOTATION = "llm.dedicated.dev/result"
POD_ANNOTATIONS_ANNOTATION = "llm.dedicated.dev/pod-annotations"
POOL_ANNOTATION = "llm.dedicated.dev/pool"
PLACEMENT_ANNOTATION = "llm.dedicated.dev/placement"
#: Reasons this module adds to the API's QuantizedModelReason (same CamelCase convention).
JOB_CREATED = "JobCreated"
NOT_VALIDATED_YET = "NotValidatedYet"
VALIDATION_DISABLED = "ValidationDisabled"
INVALID_SPEC = "InvalidSpec"

FAILURE_REASONS = frozenset({
    R.JOB_FAILED, R.DEADLINE_EXCEEDED, R.VALIDATION_FAILED, R.SECRET_NOT_FOUND, R.MODEL_UNREACHABLE,
    R.NO_EXPERTS, R.INVALID_GROUP_SIZE, R.POOL_NOT_FOUND, INVALID_SPEC,
})
EVENT_CONDITIONS = (C.JOB_CREATED.value, C.PROGRESSING.value, C.READY.value)
_STAGE_PHASE = {"fetch": (P.QUANTIZING, R.QUANTIZING), "calibrate": (P.QUANTIZING, R.QUANTIZING),
                "quantize": (P.QUANTIZING, R.QUANTIZING), "export": (P.QUANTIZING, R.QUANTIZING),
                "validate": (P.VALIDATING, R.VALIDATING), "publish": (P.PUBLISHING, R.PUBLISHING)}
#: Assumed peak GPU memory of a Job whose base model the operator cannot inspect.
DEFAULT_QUANTIZE_GIB = 40.0
RUNTIME_GIB = 4.0


# --- placement ----------------------------------------------------------------------------------


def quantize_memory_bytes(profile: ModelProfile, spec: QuantizedModelSpec) -> int:
    """Peak GPU memory of the layer-by-layer pipeline: one decoder layer in BF16 three times over
    (weights, the quantizer's work buffers, the dequantized copy it validates against), the
    calibration activations going in and out of that layer, and the CUDA/torch runtime."""
    facts = profile.facts
    text = profile.parts.bytes("text")
    per_layer_bf16 = text / max(1, facts.num_layers) * (2 / facts.dtype_bytes if facts.quant.quantized else 1)
    activations = spec.calibration.num_samples * spec.calibration.sequence_length * facts.hidden_size * 2 * 2
    return int(3 * per_layer_bf16 + activations + RUNTIME_GIB * GIB)


def choose_placement(spec: QuantizedModelSpec, pools: PoolConfig,
                     profile: ModelProfile | None) -> JobPlacement | tuple[str, str]:
    """Pool and GPU count from the spec, else the cheapest pool whose GPUs hold the estimate.
    Returns ``(reason, message)`` when no pool can be used."""
    res = spec.resources
    if profile is not None:
        need = quantize_memory_bytes(profile, spec)
        basis = f"estimated peak {need / GIB:.1f} GiB (one layer at a time)"
    else:
        need = int(DEFAULT_QUANTIZE_GIB * GIB)
        basis = f"assumed peak {DEFAULT_QUANTIZE_GIB:.0f} GiB (the base model's facts are not available to the operator)"
    if res is not None and res.pool is not None:
        pool = pools.get(res.pool)
        if pool is None:
            return (R.POOL_NOT_FOUND, f"spec.resources.pool {res.pool!r} is not a configured pool; configured: "
                                      f"{', '.join(p.name for p in pools.pools)}")
        candidates = [pool]
    else:
        candidates = list(pools.pools)

    def gpus_for(pool: NodePool) -> int:
        return res.gpus if res is not None and res.gpus else max(1, math.ceil(need / (pool.gpu_memory_mib * 2**20 * 0.9)))

    fitting = [p for p in candidates if gpus_for(p) <= p.gpus_per_node]
    if not fitting:
        pool = candidates[0]
        return (R.POOL_NOT_FOUND, f"pool {pool.name} has {pool.gpus_per_node} GPU(s) per node, the Job needs "
                                  f"{gpus_for(pool)} ({basis})")
    best = min(fitting, key=lambda p: (p.cost_per_gpu_hour * gpus_for(p), -p.gpu_memory_mib, p.name))
    gpus = gpus_for(best)
    chosen = "as requested" if res is not None and res.pool else "cheapest pool that fits"
    count = "as requested" if res is not None and res.gpus else basis
    return JobPlacement(pool=best, gpus=gpus, why=f"{best.name} ({chosen}), {gpus} GPU(s) ({count})")


def placement_of_job(job: Mapping[str, Any], pools: PoolConfig) -> JobPlacement | None:
    """The placement an existing Job was created with (to re-create its supporting objects)."""
    pool = pools.get(((job.get("metadata") or {}).get("annotations") or {}).get(POOL_ANNOTATION, ""))
    if pool is None:
        return None
    try:
        container = job["spec"]["template"]["spec"]["containers"][0]
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return JobPlacement(pool=pool, gpus=gpus, why="as created")


# --- inputs and desired objects -----------------------------------------------------------------


@dataclass(frozen=True)
class QMInput:
    name: str
    namespace: str
    uid: str
    generation: int
    spec: QuantizedModelSpec
    status: Mapping[str, Any] | None
    pools: PoolConfig
    images: ImageConfig
    job: Mapping[str, Any] | None = None  # the live Job of this generation
    missing_secrets: Sequence[str] = ()
    base_profile: ModelProfile | None = None
    termination_message: str | None = None  # from the failed pod, when the Job failed
    pod_annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def job_name(self) -> str:
        return job_name(self.name, self.generation)

    def finished_in_status(self) -> bool:
        """This generation's Job ran to an end (a failure *before* any Job, such as a missing
        Secret, is not an end: the Job is still to be made once the cause is fixed)."""
        st = self.status or {}
        created = any(c.get("type") == C.JOB_CREATED and c.get("status") == "True"
                      for c in st.get("conditions") or [])
        return st.get("observedGeneration") == self.generation and st.get("phase") in (P.SUCCEEDED, P.FAILED) \
            and st.get("jobName") == self.job_name and created


@dataclass(frozen=True)
class QMDesired:
    objects: QuantizeJobObjects | None = None
    create_job: bool = False  # create the Job (only when absent)
    placement: JobPlacement | None = None
    blocked: tuple[str, str] | None = None  # (reason, message): no Job can be made


def desired_job(inp: QMInput) -> QMDesired:
    """What to create or keep for this generation."""
    if inp.job is None and inp.finished_in_status():
        return QMDesired()  # finished before; the Job was deleted since: never start it again
    if inp.job is not None:
        if _job_finished(inp.job):
            return QMDesired()
        placement = placement_of_job(inp.job, inp.pools)
        if placement is None:
            return QMDesired()
        return QMDesired(objects=_build(inp, placement), placement=placement)
    if inp.missing_secrets:
        return QMDesired(blocked=(R.SECRET_NOT_FOUND, "; ".join(inp.missing_secrets)))
    placement = choose_placement(inp.spec, inp.pools, inp.base_profile)
    if isinstance(placement, tuple):
        return QMDesired(blocked=placement)
    try:
        objects = _build(inp, placement)
    except ValueError as err:  # the Job's config refuses the spec (should be rare: the CRD checks first)
        return QMDesired(blocked=(INVALID_SPEC, str(err)))
    return QMDesired(objects=objects, create_job=True, placement=placement)


def _build(inp: QMInput, placement: JobPlacement) -> QuantizeJobObjects:
    from dedicated.quantize_job.config import job_config_from_spec, job_secret_env, job_volume_mounts
    from dedicated.quantize_job.errors import InvalidConfig

    try:
        config = job_config_from_spec(inp.spec, inp.name, inp.namespace, inp.generation)
    except (InvalidConfig, ValidationError) as err:
        raise ValueError(f"the Job config cannot be made from this spec: {err}") from None
    return build_quantize_job(
        qm_name=inp.name, namespace=inp.namespace, generation=inp.generation, spec=inp.spec,
        config_json=config.to_json(), secret_env=job_secret_env(inp.spec), volume_mounts=job_volume_mounts(inp.spec),
        placement=placement, images=inp.images, owner=JobOwner(inp.name, inp.uid), pod_annotations=inp.pod_annotations)


# --- reading the Job ----------------------------------------------------------------------------


def _job_condition(job: Mapping[str, Any], *types: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in types and cond.get("status") == "True":
            return cond
    return None


def _job_finished(job: Mapping[str, Any]) -> bool:
    return _job_condition(job, "Complete", "Failed", "SuccessCriteriaMet", "FailureTarget") is not None


def _annotation_json(job: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    raw = ((job.get("metadata") or {}).get("annotations") or {}).get(key)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _int(v: Any, lo: int = 0, hi: int | None = None) -> int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v):
        return None
    n = max(lo, int(v))
    return min(n, hi) if hi is not None else n


def parse_progress(job: Mapping[str, Any]) -> tuple[Progress | None, int | None]:
    """The progress annotation as the status model, and ``resumedFromLayer``. Bad input is ignored
    field by field: a half-written annotation must never fail a reconcile."""
    raw = _annotation_json(job, PROGRESS_ANNOTATION)
    if raw is None:
        return None, None
    stage = raw.get("stage") if isinstance(raw.get("stage"), str) else None
    summary = raw.get("summary") if isinstance(raw.get("summary"), str) else None
    progress = Progress(stage=stage[:32] if stage else None, layer=_int(raw.get("layer")),
                        total_layers=_int(raw.get("totalLayers")), percent=_int(raw.get("percent"), 0, 100),
                        elapsed_seconds=_int(raw.get("elapsedSeconds")), eta_seconds=_int(raw.get("etaSeconds")),
                        summary=" ".join(summary.split())[:128] if summary else None)
    return progress, _int(raw.get("resumedFromLayer"))


def parse_result(job: Mapping[str, Any]) -> tuple[Artifact, Quality, str | None] | str | None:
    """The result annotation: ``(artifact, quality, manifestPath)``, an error text, or ``None``."""
    raw = _annotation_json(job, RESULT_ANNOTATION)
    if raw is None:
        ann = ((job.get("metadata") or {}).get("annotations") or {}).get(RESULT_ANNOTATION)
        return f"the {RESULT_ANNOTATION} annotation is not a JSON object" if ann else None
    try:
        art = raw.get("artifact") or {}
        artifact = Artifact.model_validate({k: art[k] for k in ("location", "format", "totalBytes", "revision")
                                            if art.get(k) is not None})
        q = raw.get("quality") or {}
        quality = Quality.model_validate({k: q[k] for k in ("perplexityOriginal", "perplexityQuantized",
                                                            "perplexityRatio", "loadTestPassed") if q.get(k) is not None})
    except (ValidationError, AttributeError, TypeError) as err:
        return f"the {RESULT_ANNOTATION} annotation is malformed: {str(err).splitlines()[0]}"
    manifest = raw.get("manifestPath") if isinstance(raw.get("manifestPath"), str) else None
    return artifact, quality, manifest


def parse_termination(message: str | None) -> tuple[str, str] | None:
    """``<Reason>: <message>`` -> (reason, message); unknown reasons become JobFailed."""
    if not message or not message.strip():
        return None
    line = " ".join(message.strip().split())[:1024]
    head, sep, rest = line.partition(":")
    if sep and head in {r.value for r in R}:
        return head, rest.strip()
    return R.JOB_FAILED, line


def termination_message(pods: Sequence[Mapping[str, Any]], container: str = "quantize") -> str | None:
    """The newest termination message among a Job's pods (current or last state)."""
    found: list[tuple[str, str]] = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != container:
                continue
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                term = state.get("terminated")
                if term and term.get("message"):
                    found.append((term.get("finishedAt") or "", term["message"]))
    return max(found)[1] if found else None


# --- status -------------------------------------------------------------------------------------


def _time(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def qm_status(inp: QMInput, desired: QMDesired, job: Mapping[str, Any] | None, *,
              now: datetime | None = None) -> tuple[dict[str, Any], list[EventSpec]]:
    """Status and Events; ``job`` is the Job as it is after any create (or ``None``)."""
    old_status = dict(inp.status or {})
    old_conditions = stored_conditions(old_status)
    status: dict[str, Any] = {"observedGeneration": inp.generation, "jobName": inp.job_name}
    validation_on = inp.spec.validation.enabled
    wants: list[Want]

    if job is None and inp.finished_in_status():
        # Finished earlier and its Job was removed since: the stored outcome stays the truth.
        keep = {k: v for k, v in old_status.items() if k != "conditions"}
        return {**keep, "conditions": condition_dicts(old_conditions)}, []

    if job is None:
        reason, message = desired.blocked or (R.JOB_PENDING, "the Job is being created")
        failed = desired.blocked is not None
        wants = [Want(C.JOB_CREATED, False, reason, message),
                 Want(C.PROGRESSING, False if failed else ConditionStatus.UNKNOWN, reason, message),
                 Want(C.VALIDATED, ConditionStatus.UNKNOWN, reason if failed else NOT_VALIDATED_YET, ""),
                 Want(C.READY, False, reason, message)]
        phase = P.FAILED if failed else P.PENDING
    else:
        wants, phase, extra = _from_job(inp, desired, job, validation_on)
        status.update(extra)
    conditions = apply_conditions(old_conditions, wants, inp.generation, now)
    status["phase"] = phase.value
    status["conditions"] = condition_dicts(conditions)
    events = transition_events(old_conditions, conditions, EVENT_CONDITIONS, FAILURE_REASONS)
    return status, events


def _from_job(inp: QMInput, desired: QMDesired, job: Mapping[str, Any],
              validation_on: bool) -> tuple[list[Want], P, dict[str, Any]]:
    name = job["metadata"]["name"]
    jstatus = job.get("status") or {}
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    placement = annotations.get(PLACEMENT_ANNOTATION) or annotations.get(POOL_ANNOTATION, "?")
    created = Want(C.JOB_CREATED, True, JOB_CREATED, f"Job {name} on {placement}")
    extra: dict[str, Any] = {}
    if start := _time(jstatus.get("startTime")):
        extra["startTime"] = start
    progress, resumed = parse_progress(job)
    if progress is not None:
        extra["progress"] = progress.to_k8s()

    result = parse_result(job)
    if isinstance(result, tuple):
        artifact, quality, _manifest = result
        extra["artifact"] = artifact.to_k8s()
        q = quality.to_k8s()
        if q:
            extra["quality"] = q
        if done := _time(jstatus.get("completionTime")):
            extra["completionTime"] = done
        ratio = quality.perplexity_ratio
        where = f"{artifact.location} ({artifact.format}" + (f", {artifact.total_bytes / GIB:.2f} GiB" if artifact.total_bytes else "") + ")"
        if validation_on and (ratio is not None or quality.load_test_passed is not None):
            figures = ", ".join(x for x in (f"perplexity ratio {ratio:.4f}" if ratio is not None else "",
                                            f"load test {'passed' if quality.load_test_passed else 'not run'}"
                                            if quality.load_test_passed is not None else "") if x)
            validated = Want(C.VALIDATED, True, R.SUCCEEDED, figures)
        elif validation_on:
            validated = Want(C.VALIDATED, ConditionStatus.UNKNOWN, NOT_VALIDATED_YET, "the result carries no quality figures")
        else:
            validated = Want(C.VALIDATED, ConditionStatus.UNKNOWN, VALIDATION_DISABLED, "spec.validation.enabled is false")
        return ([created, Want(C.PROGRESSING, False, R.SUCCEEDED, f"published {where}"), validated,
                 Want(C.READY, True, R.SUCCEEDED, f"published {where}")], P.SUCCEEDED, extra)

    failed = _job_condition(job, "Failed", "FailureTarget")
    complete = _job_condition(job, "Complete", "SuccessCriteriaMet")
    failure: tuple[str, str] | None = None
    if isinstance(result, str):
        failure = (R.JOB_FAILED, result)
    elif failed is not None:
        if failed.get("reason") == "DeadlineExceeded":
            failure = (R.DEADLINE_EXCEEDED, f"the Job ran longer than spec.activeDeadlineSeconds "
                                            f"({inp.spec.active_deadline_seconds}s): {failed.get('message', '')}".strip())
        else:
            parsed = parse_termination(inp.termination_message)
            failure = parsed or (R.JOB_FAILED, f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip())
    elif complete is not None:
        failure = (R.JOB_FAILED, f"Job {name} completed without reporting a result (no {RESULT_ANNOTATION} annotation)")
    if failure is not None:
        reason, message = failure
        done = _time(jstatus.get("completionTime")) or _time((failed or {}).get("lastTransitionTime"))
        if done:
            extra["completionTime"] = done
        validated = Want(C.VALIDATED, False, reason, message) if reason == R.VALIDATION_FAILED else \
            Want(C.VALIDATED, ConditionStatus.UNKNOWN, reason, "")
        return ([created, Want(C.PROGRESSING, False, reason, message), validated,
                 Want(C.READY, False, reason, message)], P.FAILED, extra)

    # still running
    if progress is None:
        pods = "pod running" if (jstatus.get("ready") or 0) > 0 else "waiting for its pod to start"
        msg = f"Job {name}: {pods}; no progress reported yet"
        return ([created, Want(C.PROGRESSING, True, R.JOB_PENDING, msg),
                 Want(C.VALIDATED, ConditionStatus.UNKNOWN, NOT_VALIDATED_YET, ""),
                 Want(C.READY, False, R.JOB_PENDING, msg)], P.PENDING, extra)
    phase, reason = _STAGE_PHASE.get(progress.stage or "", (P.QUANTIZING, R.QUANTIZING))
    if resumed is not None and reason == R.QUANTIZING:
        reason = R.RESUMED
    msg = progress.summary or f"{progress.stage or 'running'}"
    if resumed is not None:
        msg += f" (resumed from layer {resumed})"
    if progress.eta_seconds is not None:
        msg += f", about {progress.eta_seconds}s left"
    return ([created, Want(C.PROGRESSING, True, reason, msg),
             Want(C.VALIDATED, ConditionStatus.UNKNOWN, NOT_VALIDATED_YET, ""),
             Want(C.READY, False, reason, msg)], phase, extra)
