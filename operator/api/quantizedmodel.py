"""``QuantizedModel``: quantize a base model's routed experts on a GPU Job and publish the result.

The spec is the typed mirror of the quantize Job's own config (issue 4); the status carries the
Job's progress (stage, layer i of n), the artifact's location and its quality figures, so
``kubectl get quantizedmodels`` shows method, bits, phase and progress.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from .common import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    HUB_REPO,
    MODULE_PATTERN,
    REL_PATH,
    ApiModel,
    HubModel,
    NoDotDot,
    NoDoubleDash,
    SecretKeyRef,
    VolumeModel,
    at_most_one,
    cel,
    count_set,
    exactly_one,
    k8s_extra,
)
from .conditions import Condition

#: Bit widths each method can produce. GSQ's reference output is the 2-bit Humming format;
#: AutoRound exports auto_round:auto_gptq at 2/3/4/8 bits.
SUPPORTED_BITS: dict[str, tuple[int, ...]] = {"gsq": (2,), "autoround": (2, 3, 4, 8)}


class QuantizationMethod(StrEnum):
    GSQ = "gsq"
    AUTOROUND = "autoround"


class BaseModelSource(ApiModel):
    """The model to quantize: a Hub repo or a directory on a volume."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(exactly_one(("hub", "volume"), "spec.base")))

    hub: Annotated[HubModel | None, Field(description="Base model on the Hugging Face Hub.")] = None
    volume: Annotated[VolumeModel | None, Field(description="Base model on a PersistentVolumeClaim.")] = None

    @model_validator(mode="after")
    def _one(self) -> BaseModelSource:
        if count_set(self, ("hub", "volume")) != 1:
            raise ValueError("spec.base: set exactly one of hub, volume")
        return self


class ModuleSelection(ApiModel):
    """Which Linear modules to quantize and which to keep in BF16 (regular expressions).

    Unset lists take the method's reference defaults (routed experts only; shared experts, router,
    attention, vision, MTP and lm_head kept in BF16).
    """

    quantize: Annotated[list[Annotated[str, Field(min_length=1, max_length=256, pattern=MODULE_PATTERN, description="A module-name regular expression.")]] | None,
                        Field(max_length=64, description="Module-name regexes to quantize.")] = None
    keep_bf16: Annotated[list[Annotated[str, Field(min_length=1, max_length=256, pattern=MODULE_PATTERN, description="A module-name regular expression.")]] | None,
                         Field(alias="keepBF16", max_length=64,
                               description="Module-name regexes kept in BF16 (wins over `quantize`).")] = None


class HubDataset(ApiModel):
    """A calibration dataset on the Hub."""

    repo: Annotated[str, Field(min_length=3, max_length=96, pattern=HUB_REPO,
                               description="Dataset repository id, `owner/name`.",
                               json_schema_extra=k8s_extra(cel("!self.contains('..') && !self.contains('--')",
                                                               "repo must not contain '..' or '--'"))),
                    NoDotDot, NoDoubleDash]
    config: Annotated[str | None, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                        description="Dataset configuration name.")] = None
    split: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\[\]:%-]*$",
                                description="Split, e.g. `train`.")] = "train"
    column: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
                                 description="Text column.")] = "text"
    token_secret_ref: Annotated[SecretKeyRef | None, Field(description="Token for a gated dataset.")] = None


class Calibration(ApiModel):
    """Calibration text: a Hub dataset, a file on a volume, or the built-in default when neither."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(at_most_one(("dataset", "file"), "spec.calibration")))

    dataset: Annotated[HubDataset | None, Field(description="A Hub dataset.")] = None
    file: Annotated[VolumeModel | None, Field(
        description="A text or JSONL file on a volume (`path` names the file).")] = None
    num_samples: Annotated[int, Field(ge=1, le=65536, description="Calibration sequences.")] = 128
    sequence_length: Annotated[int, Field(ge=64, le=32768, description="Tokens per sequence.")] = 2048

    @model_validator(mode="after")
    def _at_most_one(self) -> Calibration:
        if count_set(self, ("dataset", "file")) > 1:
            raise ValueError("spec.calibration: set at most one of dataset, file")
        return self


class HubOutput(ApiModel):
    """Publish the checkpoint to a Hub repo (needs a token with write access)."""

    repo: Annotated[str, Field(min_length=3, max_length=96, pattern=HUB_REPO,
                               description="Target repository id, `owner/name`.",
                               json_schema_extra=k8s_extra(cel("!self.contains('..') && !self.contains('--')",
                                                               "repo must not contain '..' or '--'"))),
                    NoDotDot, NoDoubleDash]
    token_secret_ref: Annotated[SecretKeyRef, Field(description="Secret key with a write token.")]
    private: Annotated[bool, Field(description="Create the repo as private.")] = True


class Output(ApiModel):
    """Where the finished checkpoint goes. A volume also holds the per-layer resume checkpoints."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(exactly_one(("volume", "hub"), "spec.output")))

    volume: Annotated[VolumeModel | None, Field(description="A PersistentVolumeClaim directory.")] = None
    hub: Annotated[HubOutput | None, Field(description="A Hugging Face Hub repository.")] = None
    scratch_claim_name: Annotated[str | None, Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
        description="PVC for resume checkpoints when publishing to the Hub (required then, so a "
        "preempted Job resumes instead of starting over).")] = None

    @model_validator(mode="after")
    def _one(self) -> Output:
        if count_set(self, ("volume", "hub")) != 1:
            raise ValueError("spec.output: set exactly one of volume, hub")
        return self


class JobResources(ApiModel):
    """Where the quantization Job runs; the operator estimates when unset."""

    pool: Annotated[str | None, Field(min_length=1, max_length=63, pattern=DNS_LABEL,
                                      description="Node pool for the Job.")] = None
    gpus: Annotated[int | None, Field(ge=1, le=8, description="GPUs for the Job.")] = None


class ValidationOptions(ApiModel):
    """Post-quantization checks: perplexity against the original and a load test."""

    enabled: Annotated[bool, Field(description="Run validation before publishing.")] = True
    max_perplexity_ratio: Annotated[float | None, Field(
        ge=1.0, le=100.0,
        description="Fail if quantized perplexity / original perplexity exceeds this.")] = None


class QuantizedModelSpec(ApiModel):
    """Desired quantization."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(
        *(cel(f"self.method != '{method}' || self.bits in {list(bits)}",
              f"spec.bits: method {method} supports {', '.join(map(str, bits))} bits",
              field_path=".bits")
          for method, bits in SUPPORTED_BITS.items()),
        cel("!has(self.output.hub) || has(self.output.scratchClaimName)",
            "spec.output.scratchClaimName is required when spec.output.hub is set",
            field_path=".output.scratchClaimName"),
    ))

    base: Annotated[BaseModelSource, Field(description="The model to quantize.")]
    method: Annotated[QuantizationMethod, Field(description="`gsq` (2-bit, Humming format) or "
                                                            "`autoround` (auto_round:auto_gptq).")]
    bits: Annotated[Literal[2, 3, 4, 8], Field(description="Weight bit width; must suit the method.")]
    group_size: Annotated[Literal[32, 64, 128, 256], Field(
        description="Weights per scale group; must divide every quantized input dimension.")] = 128
    modules: Annotated[ModuleSelection | None, Field(description="Module selection; reference defaults when unset.")] = None
    calibration: Annotated[Calibration, Field(default_factory=Calibration, json_schema_extra={"default": {}}, description="Calibration data.")]
    output: Annotated[Output, Field(description="Where to publish.")]
    resources: Annotated[JobResources | None, Field(description="Job placement.")] = None
    validation: Annotated[ValidationOptions, Field(default_factory=ValidationOptions, json_schema_extra={"default": {}},
                                                   description="Validation before publishing.")]
    backoff_limit: Annotated[int, Field(ge=0, le=20, description="Job retries (each resumes from the "
                                                                   "last finished layer).")] = 4
    active_deadline_seconds: Annotated[int, Field(ge=600, le=1209600,
                                                  description="Wall-clock limit for the whole Job.")] = 172800

    @model_validator(mode="after")
    def _consistent(self) -> QuantizedModelSpec:
        allowed = SUPPORTED_BITS[self.method.value]
        if self.bits not in allowed:
            raise ValueError(f"spec.bits: method {self.method.value} supports "
                             f"{', '.join(map(str, allowed))} bits, not {self.bits}")
        if self.output.hub is not None and self.output.scratch_claim_name is None:
            raise ValueError("spec.output.scratchClaimName is required when spec.output.hub is set")
        return self


# --- status -------------------------------------------------------------------------------------


class QuantizedModelPhase(StrEnum):
    PENDING = "Pending"
    QUANTIZING = "Quantizing"
    VALIDATING = "Validating"
    PUBLISHING = "Publishing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class QuantizedModelConditionType(StrEnum):
    JOB_CREATED = "JobCreated"  # the Job for this generation exists
    PROGRESSING = "Progressing"  # quantization/validation under way
    VALIDATED = "Validated"  # quality checks passed
    READY = "Ready"  # artifact published and usable by endpoints


class QuantizedModelReason(StrEnum):
    JOB_PENDING = "JobPending"
    QUANTIZING = "Quantizing"
    VALIDATING = "Validating"
    PUBLISHING = "Publishing"
    RESUMED = "Resumed"
    SUCCEEDED = "Succeeded"
    JOB_FAILED = "JobFailed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    VALIDATION_FAILED = "ValidationFailed"
    SECRET_NOT_FOUND = "SecretNotFound"
    MODEL_UNREACHABLE = "ModelUnreachable"
    NO_EXPERTS = "NoExperts"
    INVALID_GROUP_SIZE = "InvalidGroupSize"
    POOL_NOT_FOUND = "PoolNotFound"


class Progress(ApiModel):
    """Progress reported by the Job (termination message / progress file)."""

    stage: Annotated[str | None, Field(max_length=32, description="fetch, calibrate, quantize, export, "
                                                                  "validate or publish.")] = None
    layer: Annotated[int | None, Field(ge=0, description="Layers finished.")] = None
    total_layers: Annotated[int | None, Field(ge=0, description="Layers in the model.")] = None
    percent: Annotated[int | None, Field(ge=0, le=100, description="Overall percent done.")] = None
    elapsed_seconds: Annotated[int | None, Field(ge=0, description="Time spent so far.")] = None
    eta_seconds: Annotated[int | None, Field(ge=0, description="Estimated time left.")] = None
    summary: Annotated[str | None, Field(max_length=128, description="One-line progress for the printer "
                                                                     "column, e.g. `quantize 12/40 (31%)`.")] = None


class Artifact(ApiModel):
    """The published checkpoint."""

    location: Annotated[str, Field(max_length=1024, description="`pvc://<claim>/<path>` or "
                                                                "`hf://<owner>/<name>@<revision>`.")]
    format: Annotated[str, Field(max_length=64, description="`humming` or `auto_round`.")]
    total_bytes: Annotated[int | None, Field(ge=0, description="Bytes of all weight files.")] = None
    revision: Annotated[str | None, Field(max_length=255, description="Hub commit of the upload.")] = None


class Quality(ApiModel):
    """Validation figures measured by the Job."""

    perplexity_original: Annotated[float | None, Field(ge=0, description="Original model perplexity.")] = None
    perplexity_quantized: Annotated[float | None, Field(ge=0, description="Quantized model perplexity.")] = None
    perplexity_ratio: Annotated[float | None, Field(ge=0, description="quantized / original.")] = None
    load_test_passed: Annotated[bool | None, Field(description="The result loaded and generated text.")] = None


class QuantizedModelStatus(ApiModel):
    """Observed state, written only by the operator."""

    observed_generation: Annotated[int | None, Field(ge=0, description="Last generation acted on.")] = None
    phase: Annotated[QuantizedModelPhase | None, Field(description="Summary for humans.")] = None
    conditions: Annotated[list[Condition] | None, Field(
        max_length=16, description="Current conditions (JobCreated, Progressing, Validated, Ready).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})] = None
    job_name: Annotated[str | None, Field(max_length=63, description="The Job of the current generation.")] = None
    progress: Annotated[Progress | None, Field(description="Job progress.")] = None
    artifact: Annotated[Artifact | None, Field(description="The published checkpoint.")] = None
    quality: Annotated[Quality | None, Field(description="Validation figures.")] = None
    start_time: Annotated[datetime | None, Field(description="When the current Job started.")] = None
    completion_time: Annotated[datetime | None, Field(description="When it finished.")] = None


class QuantizedModel(ApiModel):
    """The whole object as stored (metadata untyped)."""

    model_config = ConfigDict(extra="ignore")

    spec: QuantizedModelSpec
    status: QuantizedModelStatus | None = None
