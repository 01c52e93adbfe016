"""``DedicatedEndpoint``: serve one model on reserved GPUs with N vLLM replicas.

The spec says *what* the user wants and what they allow (pool, GPU count, context, concurrency,
text-only/MTP as ``auto``/``on``/``off``); the status says *what the planner chose and why*, so
``kubectl get -o wide`` and ``kubectl describe`` answer "where does it run and with which options".
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import ConfigDict, Field, model_validator

from .common import (
    DNS_LABEL,
    GPU_FAMILY,
    IMAGE_REF,
    QUANTITY,
    SERVED_NAME,
    ApiModel,
    FeatureMode,
    HubModel,
    LocalObjectRef,
    VolumeModel,
    at_most_one,
    cel,
    count_set,
    exactly_one,
    k8s_extra,
)
from .conditions import Condition

# --- spec ---------------------------------------------------------------------------------------


class EndpointModel(ApiModel):
    """Where the weights come from: a ``QuantizedModel``, a Hub repo, or a volume."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(
        exactly_one(("quantizedModelRef", "hub", "volume"), "spec.model")))

    quantized_model_ref: Annotated[LocalObjectRef | None, Field(
        description="A `QuantizedModel` in the same namespace; the endpoint waits until it has "
        "succeeded and serves its published artifact.")] = None
    hub: Annotated[HubModel | None, Field(
        description="An already-quantized (or BF16) model repository on the Hugging Face Hub.")] = None
    volume: Annotated[VolumeModel | None, Field(
        description="A checkpoint directory on a PersistentVolumeClaim (config.json + safetensors).")] = None
    served_model_name: Annotated[str | None, Field(
        min_length=1, max_length=128, pattern=SERVED_NAME,
        description="Name clients pass as `model` in OpenAI requests; defaults to the repo id or "
        "the QuantizedModel's name.")] = None

    @model_validator(mode="after")
    def _one_source(self) -> EndpointModel:
        if count_set(self, ("quantizedModelRef", "hub", "volume")) != 1:
            raise ValueError("spec.model: set exactly one of quantizedModelRef, hub, volume")
        return self


class Isolation(StrEnum):
    """Whether the endpoint's pods may share nodes with other teams' pods (issue 8)."""

    SHARED = "shared"
    DEDICATED_NODES = "dedicated-nodes"


class Placement(ApiModel):
    """Which GPUs may serve it. Unset fields leave the choice to the planner (cheapest that fits)."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(
        cel("!has(self.gpusPerReplica) || !has(self.maxGpusPerReplica) || "
            "self.gpusPerReplica <= self.maxGpusPerReplica",
            "spec.placement.gpusPerReplica must be <= spec.placement.maxGpusPerReplica",
            field_path=".gpusPerReplica"),
        at_most_one(("pool", "gpuFamilies"), "spec.placement"),
    ))

    pool: Annotated[str | None, Field(
        min_length=1, max_length=63, pattern=DNS_LABEL,
        description="Name of a node pool from the operator's pool configuration. When unset, "
        "the cheapest pool that fits is chosen.")] = None
    gpu_families: Annotated[list[Annotated[str, Field(min_length=1, max_length=32, pattern=GPU_FAMILY, description="A GPU family.")]] | None,
                            Field(min_length=1, max_length=8,
                                  description="Restrict the choice to pools of these GPU families "
                                  "(`ampere`, `hopper`, `blackwell`, ...).",
                                  json_schema_extra={"x-kubernetes-list-type": "set"})] = None
    gpus_per_replica: Annotated[int | None, Field(
        ge=1, le=16,
        description="Exact GPUs per replica (the tensor-parallel size). When unset, the smallest "
        "count that fits and that the model's shapes allow is chosen.")] = None
    max_gpus_per_replica: Annotated[int | None, Field(
        ge=1, le=16, description="Upper bound on GPUs per replica when the planner chooses.")] = None
    isolation: Annotated[Isolation, Field(
        description="`dedicated-nodes`: no pod of another team (namespaces of another GPUQuota, or "
        "another namespace outside every quota) may run on a node that runs this endpoint's pods, "
        "enforced by the scheduler through required pod anti-affinity on the team label; "
        "`shared`: no such restriction.")] = Isolation.SHARED

    @model_validator(mode="after")
    def _consistent(self) -> Placement:
        if (self.gpus_per_replica is not None and self.max_gpus_per_replica is not None
                and self.gpus_per_replica > self.max_gpus_per_replica):
            raise ValueError("spec.placement.gpusPerReplica must be <= spec.placement.maxGpusPerReplica")
        if self.pool is not None and self.gpu_families is not None:
            raise ValueError("spec.placement: set at most one of pool, gpuFamilies")
        return self


class MtpOptions(ApiModel):
    """Multi-token-prediction speculative decoding with the checkpoint's own MTP head."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(
        cel("!has(self.numSpeculativeTokens) || self.mode != 'off'",
            "spec.serving.mtp.numSpeculativeTokens must not be set when spec.serving.mtp.mode is off",
            field_path=".numSpeculativeTokens"),
    ))

    mode: Annotated[FeatureMode, Field(
        description="`on`: require MTP (fails if the model has no MTP head or it does not fit); "
        "`off`: never; `auto`: on when the model has an MTP head and it fits.")] = FeatureMode.AUTO
    num_speculative_tokens: Annotated[int | None, Field(
        ge=1, le=8, description="Draft tokens per step; the planner's default when unset.")] = None

    @model_validator(mode="after")
    def _tokens_need_mtp(self) -> MtpOptions:
        if self.num_speculative_tokens is not None and self.mode == FeatureMode.OFF:
            raise ValueError("spec.serving.mtp.numSpeculativeTokens must not be set when "
                             "spec.serving.mtp.mode is off")
        return self


class Serving(ApiModel):
    """How vLLM serves: context length, concurrency, memory share, optional features."""

    context_length: Annotated[int | None, Field(
        ge=256, le=1048576,
        description="Required `--max-model-len` in tokens. When unset, the largest standard length "
        "(up to the model's maximum) that fits is chosen.")] = None
    concurrency: Annotated[int, Field(
        ge=1, le=1024,
        description="Sequences served at once (`--max-num-seqs`). The KV cache is sized so that "
        "this many sequences can each hold the full context length.")] = 8
    gpu_memory_utilization: Annotated[float | None, Field(
        ge=0.5, le=0.98,
        description="Override of vLLM's `--gpu-memory-utilization`; the planner's per-pool value "
        "when unset.")] = None
    text_only: Annotated[FeatureMode, Field(
        description="Skip the vision encoder. `on`: always text-only; `off`: keep vision (fails if it "
        "does not fit); `auto`: keep vision if it fits. Ignored for models without vision.")] = FeatureMode.AUTO
    mtp: Annotated[MtpOptions, Field(default_factory=MtpOptions, json_schema_extra={"default": {}},
                                     description="MTP speculative decoding.")]


class PodResources(ApiModel):
    """CPU and memory for each serving container (GPUs come from the plan, not from here)."""

    cpu: Annotated[str | None, Field(
        max_length=32, pattern=QUANTITY,
        description="CPU request, a Kubernetes quantity (`8`, `7500m`).")] = None
    memory: Annotated[str | None, Field(
        max_length=32, pattern=QUANTITY,
        description="Memory request and limit, a Kubernetes quantity (`64Gi`).")] = None


class DedicatedEndpointSpec(ApiModel):
    """Desired state of a dedicated endpoint."""

    model: Annotated[EndpointModel, Field(description="The model to serve.")]
    replicas: Annotated[int, Field(
        ge=0, le=64,
        description="Number of serving replicas; each gets `status.plan.gpusPerReplica` GPUs. "
        "Driven by `kubectl scale` and autoscalers through the scale subresource.")] = 1
    placement: Annotated[Placement, Field(default_factory=Placement, json_schema_extra={"default": {}},
                                          description="GPU pool and count constraints.")]
    serving: Annotated[Serving, Field(default_factory=Serving, json_schema_extra={"default": {}}, description="vLLM serving options.")]
    image: Annotated[str | None, Field(
        max_length=512, pattern=IMAGE_REF,
        description="Serving image override; the operator's configured default when unset.")] = None
    resources: Annotated[PodResources | None, Field(
        description="CPU/memory for each serving pod; planner defaults when unset.")] = None


# --- status -------------------------------------------------------------------------------------


class EndpointPhase(StrEnum):
    """Human summary of the conditions, for the printer column."""

    PENDING = "Pending"
    WAITING_FOR_MODEL = "WaitingForModel"
    DEPLOYING = "Deploying"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class EndpointConditionType(StrEnum):
    MODEL_READY = "ModelReady"  # the weights exist and the config was read
    PLANNED = "Planned"  # a VRAM plan fits somewhere
    PROGRESSING = "Progressing"  # a rollout is under way
    AVAILABLE = "Available"  # at least one replica serves
    READY = "Ready"  # all desired replicas serve the current spec


class EndpointReason(StrEnum):
    """Reasons used in endpoint conditions; planner failure codes are a subset (see PlanFailure)."""

    # ModelReady
    MODEL_RESOLVED = "ModelResolved"
    WAITING_FOR_QUANTIZED_MODEL = "WaitingForQuantizedModel"
    QUANTIZED_MODEL_FAILED = "QuantizedModelFailed"
    QUANTIZED_MODEL_NOT_FOUND = "QuantizedModelNotFound"
    MODEL_NOT_FOUND = "ModelNotFound"
    CONFIG_UNREADABLE = "ConfigUnreadable"
    SECRET_NOT_FOUND = "SecretNotFound"
    # Planned
    PLAN_FOUND = "PlanFound"
    POOL_NOT_FOUND = "PoolNotFound"
    NO_POOL_MATCHES = "NoPoolMatches"
    INSUFFICIENT_GPU_MEMORY = "InsufficientGPUMemory"
    UNSUPPORTED_COMPUTE_CAPABILITY = "UnsupportedComputeCapability"
    INCOMPATIBLE_TENSOR_PARALLEL = "IncompatibleTensorParallel"
    CONTEXT_TOO_LONG = "ContextTooLong"
    FEATURE_UNAVAILABLE = "FeatureUnavailable"
    UNSUPPORTED_MODEL = "UnsupportedModel"
    # Progressing / Available / Ready
    ROLLING_OUT = "RollingOut"
    ROLLOUT_COMPLETE = "RolloutComplete"
    SCALED_TO_ZERO = "ScaledToZero"
    REPLICAS_READY = "ReplicasReady"
    REPLICAS_NOT_READY = "ReplicasNotReady"


class PlanStatus(ApiModel):
    """What the VRAM planner chose, with the figures behind it."""

    pool: Annotated[str, Field(max_length=63, description="Chosen node pool.")]
    gpu_family: Annotated[str, Field(max_length=32, description="GPU family of the pool.")]
    gpu_product: Annotated[str, Field(max_length=128, description="GPU product of the pool (GFD label value).")]
    gpus_per_replica: Annotated[int, Field(ge=1, description="GPUs each replica requests.")]
    tensor_parallel_size: Annotated[int, Field(ge=1, description="vLLM `--tensor-parallel-size`.")]
    max_model_len: Annotated[int, Field(ge=1, description="vLLM `--max-model-len`.")]
    max_num_seqs: Annotated[int, Field(ge=1, description="vLLM `--max-num-seqs`.")]
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1, description="vLLM `--gpu-memory-utilization`.")]
    text_only: Annotated[bool, Field(description="Vision encoder skipped.")]
    mtp: Annotated[bool, Field(description="MTP speculative decoding on.")]
    num_speculative_tokens: Annotated[int | None, Field(ge=1, description="MTP draft tokens per step.")] = None
    weights_gib: Annotated[float, Field(
        alias="weightsGiB", ge=0, description="Weights loaded per replica, GiB (all GPUs together).")]
    kv_cache_gib: Annotated[float, Field(
        alias="kvCacheGiB", ge=0, description="KV cache + recurrent state guaranteed per replica, GiB.")]
    per_gpu_gib: Annotated[float, Field(
        alias="perGpuGiB", ge=0, description="Memory needed per GPU, GiB (weights shard + KV + overhead).")]
    usable_per_gpu_gib: Annotated[float, Field(
        alias="usablePerGpuGiB", ge=0, description="Memory vLLM may use per GPU on this pool, GiB.")]
    cost_per_hour: Annotated[float, Field(ge=0, description="Cost per replica-hour (pool cost x GPUs).")]
    explanation: Annotated[str, Field(max_length=4096, description="Why this plan, in words.")]


class DedicatedEndpointStatus(ApiModel):
    """Observed state, written only by the operator."""

    observed_generation: Annotated[int | None, Field(ge=0, description="Last generation acted on.")] = None
    phase: Annotated[EndpointPhase | None, Field(description="Summary for humans; conditions are authoritative.")] = None
    conditions: Annotated[list[Condition] | None, Field(
        max_length=16, description="Current conditions (ModelReady, Planned, Progressing, Available, Ready).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})] = None
    model: Annotated[str | None, Field(max_length=512, description="The model being served, for display.")] = None
    replicas: Annotated[int | None, Field(ge=0, description="Serving pods that exist (scale subresource).")] = None
    ready_replicas: Annotated[int | None, Field(ge=0, description="Serving pods that pass readiness.")] = None
    selector: Annotated[str | None, Field(max_length=1024, description="Label selector of the serving pods "
                                                                       "(scale subresource, for HPAs).")] = None
    url: Annotated[str | None, Field(max_length=1024, description="In-cluster OpenAI-compatible base URL.")] = None
    plan: Annotated[PlanStatus | None, Field(description="The current VRAM plan.")] = None
    spec_hash: Annotated[str | None, Field(max_length=64, description="Hash of the deployed serving "
                                                                      "configuration.")] = None


class DedicatedEndpoint(ApiModel):
    """The whole object as stored (metadata is Kubernetes' own and left untyped here)."""

    model_config = ConfigDict(extra="ignore")

    spec: DedicatedEndpointSpec
    status: DedicatedEndpointStatus | None = None
