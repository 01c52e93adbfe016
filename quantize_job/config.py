"""The quantize Job's typed config: the ``QuantizedModel`` spec with every default and path resolved.

The operator renders it (``job_config_from_spec``) into the ConfigMap the Job mounts at
``/etc/dedicated/job/config.json``; the program reads it back with ``load_config``. Resolving here,
once, means the program never has to know about PVC names, Secret references or CRD defaults, and the
operator never has to know about state directories: both sides share this one module.

Secrets never appear in the config: a source that needs a token names the *environment variable*
(``tokenEnv``) that the Job's pod gets from a ``secretKeyRef`` (``job_secret_env`` lists them).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from dedicated.operator.api.quantizedmodel import SUPPORTED_BITS
from dedicated.quantize_job.errors import InvalidConfig

if TYPE_CHECKING:
    from dedicated.operator.api.common import SecretKeyRef
    from dedicated.operator.api.quantizedmodel import QuantizedModelSpec

CONFIG_VERSION = 1
DEFAULT_CONFIG_PATH = "/etc/dedicated/job/config.json"
STATE_DIR_NAME = ".quantize-state"
METHODS: tuple[str, ...] = tuple(SUPPORTED_BITS)
GROUP_SIZES: tuple[int, ...] = (32, 64, 128, 256)
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"

#: Routed-expert projections, by checkpoint tensor name (``...mlp.experts.<i>.<proj>``). Shared
#: experts are named ``shared_expert(s)`` and never match.
ROUTED_EXPERTS = r"\.mlp\.experts\.\d+\.[A-Za-z0-9_]+$"

#: GSQ reference (shared/DESIGN.md): routed experts only; everything else stays BF16. The same list
#: becomes the Humming ``ignore`` list.
GSQ_QUANTIZE = [ROUTED_EXPERTS]
GSQ_KEEP_BF16 = [
    r"lm_head", r".*self_attn.*", r".*linear_attn.*", r".*visual.*", r"^mtp.*", r"(^|\.)mtp\.",
    r".*mlp\.gate$", r".*mlp\.shared_expert_gate$", r".*shared_expert.*",
]
#: AutoRound reference: every decoder Linear except these (W4A16 on attention and experts alike).
AUTOROUND_QUANTIZE = [r"^model\.(language_model\.)?layers\.\d+\."]
AUTOROUND_KEEP_BF16 = [
    r".*shared_expert.*", r".*mlp\.shared_expert_gate$", r"^mtp.*", r"(^|\.)mtp\.",
    r".*linear_attn\.in_proj_a$", r".*linear_attn\.in_proj_b$", r".*linear_attn\.in_proj_ba$",
    r".*mlp\.gate$", r".*visual.*", r"lm_head",
]
DEFAULT_MODULES: dict[str, tuple[list[str], list[str]]] = {
    "gsq": (GSQ_QUANTIZE, GSQ_KEEP_BF16),
    "autoround": (AUTOROUND_QUANTIZE, AUTOROUND_KEEP_BF16),
}

#: Default ceiling on quantized/original held-out perplexity when the spec sets none. Chosen loose
#: enough for a good quantization of a real model at that width and tight enough to catch a broken
#: one (a garbage checkpoint is off by orders of magnitude, not by percent).
DEFAULT_MAX_PPL_RATIO: dict[int, float] = {2: 2.0, 3: 1.5, 4: 1.25, 8: 1.05}


class _Model(BaseModel):
    """camelCase on the wire like the CRDs; unknown keys are an error (a typo must not be ignored)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def _absolute(value: str | None) -> str | None:
    if value is not None:
        p = PurePosixPath(value)
        if not p.is_absolute() or ".." in p.parts:
            raise ValueError(f"{value!r} must be an absolute path without '..'")
    return value


class HubSource(_Model):
    """A Hub repository (model or dataset) at a revision; the token comes from an env variable."""

    repo: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")]
    revision: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")] = None
    token_env: Annotated[str | None, Field(pattern=ENV_NAME,
                                           description="Env variable holding the token; none = anonymous.")] = None


class ModelSource(_Model):
    """The base model: a Hub repo or an absolute directory (a mounted volume or, locally, any path)."""

    hub: HubSource | None = None
    path: str | None = None

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str | None) -> str | None:
        return _absolute(value)

    @model_validator(mode="after")
    def _one(self) -> ModelSource:
        if (self.hub is None) == (self.path is None):
            raise ValueError("model: set exactly one of hub, path")
        return self

    def describe(self) -> str:
        if self.hub is not None:
            return f"hf://{self.hub.repo}@{self.hub.revision or 'main'}"
        return str(self.path)


class HubDatasetSource(HubSource):
    config: str | None = None
    split: str = "train"
    column: str = "text"


class CalibrationConfig(_Model):
    """Calibration text: a Hub dataset, a text/JSONL file, or the built-in corpus when neither."""

    dataset: HubDatasetSource | None = None
    file: str | None = None
    num_samples: Annotated[int, Field(ge=1, le=65536)] = 128
    sequence_length: Annotated[int, Field(ge=16, le=32768)] = 2048

    @field_validator("file")
    @classmethod
    def _absolute_file(cls, value: str | None) -> str | None:
        return _absolute(value)

    @model_validator(mode="after")
    def _at_most_one(self) -> CalibrationConfig:
        if self.dataset is not None and self.file is not None:
            raise ValueError("calibration: set at most one of dataset, file")
        return self

    @property
    def source_kind(self) -> str:
        return "dataset" if self.dataset else "file" if self.file else "builtin"


class ModuleSelection(_Model):
    """Regexes (``re.search`` on checkpoint module names such as ``model.layers.3.mlp.experts.7.up_proj``).

    A module is quantized when it matches a ``quantize`` pattern and no ``keepBF16`` pattern.
    """

    quantize: list[str]
    keep_bf16: Annotated[list[str], Field(alias="keepBF16")]

    @field_validator("quantize", "keep_bf16")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"{p!r} is not a valid regular expression: {exc}") from None
        return patterns

    def selects(self, module_name: str) -> bool:
        name = module_name.removesuffix(".weight")
        return any(re.search(p, name) for p in self.quantize) and not any(
            re.search(p, name) for p in self.keep_bf16)

    @property
    def asks_for_experts(self) -> bool:
        """Whether the selection is about MoE experts (so a dense model is a NoExperts error)."""
        return any("expert" in p for p in self.quantize)


class VolumeOutput(_Model):
    claim_name: str | None = None  # for the artifact location pvc://<claim>/<path>; None locally
    path: str = ""  # the directory relative to the claim's root (only for the location string)


class HubOutput(_Model):
    repo: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")]
    private: bool = True
    token_env: Annotated[str, Field(pattern=ENV_NAME)] = "HF_TOKEN"
    commit_message: str | None = None


class OutputConfig(_Model):
    """``dir`` is where the checkpoint lands (volume) or is staged (Hub); the state lives inside it."""

    dir: str
    volume: VolumeOutput | None = None
    hub: HubOutput | None = None
    keep_intermediate: bool = Field(False, description="Keep the compressed-tensors intermediate "
                                    "(GSQ) in the state dir after publishing.")
    keep_state: bool = Field(False, description="Keep the per-layer state after a successful publish.")

    @field_validator("dir")
    @classmethod
    def _absolute_dir(cls, value: str | None) -> str | None:
        return _absolute(value)

    @model_validator(mode="after")
    def _one(self) -> OutputConfig:
        if (self.volume is None) == (self.hub is None):
            raise ValueError("output: set exactly one of volume, hub")
        if PurePosixPath(self.dir) == PurePosixPath("/"):
            raise ValueError("output.dir must not be the filesystem root")
        return self

    @property
    def state_dir(self) -> Path:
        return Path(self.dir) / STATE_DIR_NAME

    def location(self, revision: str | None = None) -> str:
        if self.hub is not None:
            return f"hf://{self.hub.repo}@{revision or 'main'}"
        assert self.volume is not None
        if self.volume.claim_name:
            return f"pvc://{self.volume.claim_name}/{self.volume.path}".rstrip("/")
        return f"file://{self.dir}"


class ValidationConfig(_Model):
    enabled: bool = True
    max_perplexity_ratio: Annotated[float, Field(ge=1.0, le=1000.0)] = 2.0
    heldout_samples: Annotated[int, Field(ge=1, le=4096)] = 32
    heldout_sequence_length: Annotated[int, Field(ge=16, le=32768)] = 512
    generate_tokens: Annotated[int, Field(ge=1, le=256)] = 8


class RuntimeConfig(_Model):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Compute dtype of the layer forward passes (weights are read as stored, then cast).
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    #: Minimum seconds between two patches of the progress annotation.
    progress_interval_seconds: Annotated[float, Field(ge=0.0, le=3600.0)] = 5.0
    #: Tries for a Hub download before the model counts as unreachable (connection errors, 5xx).
    fetch_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    #: Quantizer knobs passed through to the engine (e.g. GSQ steps); the method's defaults if empty.
    method_options: dict[str, int | float | str | bool] = Field(default_factory=dict)


class JobConfig(_Model):
    """Everything the Job needs, nothing secret."""

    version: Literal[1] = CONFIG_VERSION
    name: Annotated[str, Field(min_length=1, max_length=253)] = "local"
    namespace: Annotated[str, Field(min_length=1, max_length=63)] = "default"
    generation: Annotated[int, Field(ge=0)] = 0
    model: ModelSource
    method: Literal["gsq", "autoround"]
    bits: int
    group_size: int = 128
    modules: ModuleSelection
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    output: OutputConfig
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        """Fill ``modules`` with the method's reference selection when the config leaves it out."""
        if isinstance(data, dict) and data.get("modules") is None and data.get("method") in DEFAULT_MODULES:
            quantize, keep = DEFAULT_MODULES[data["method"]]
            data = {**data, "modules": {"quantize": list(quantize), "keepBF16": list(keep)}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> JobConfig:
        allowed = SUPPORTED_BITS[self.method]
        if self.bits not in allowed:
            raise ValueError(f"bits: method {self.method} supports {', '.join(map(str, allowed))} bits, "
                             f"not {self.bits}")
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"groupSize: {self.group_size} is not one of {GROUP_SIZES}")
        return self

    @property
    def output_format(self) -> str:
        return "humming" if self.method == "gsq" else "auto_round"

    def fingerprint(self, model_revision: str | None = None) -> str:
        """Digest of everything that determines the quantized weights; the resume state is keyed on it.

        Output, validation and progress settings are left out on purpose: changing the perplexity
        ceiling must not throw away hours of finished layers.
        """
        keyed = self.model_dump(mode="json", include={"model", "method", "bits", "group_size", "modules",
                                                      "calibration"})
        keyed["runtime"] = {"method_options": self.runtime.method_options, "dtype": self.runtime.dtype}
        keyed["model_revision"] = model_revision
        if keyed["model"].get("hub"):
            keyed["model"]["hub"].pop("token_env", None)
        if keyed["calibration"].get("dataset"):
            keyed["calibration"]["dataset"].pop("token_env", None)
        blob = json.dumps(keyed, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    errors = exc.errors()
    bad_method = any(err["loc"] == ("method",) for err in errors)
    for err in errors:
        loc = ".".join(str(p) for p in err["loc"])
        if bad_method and loc == "modules":
            continue  # the defaults depend on the method: one error, not two
        msg = err["msg"].removeprefix("Value error, ")
        if err["loc"] == ("method",) and err["type"] == "literal_error":
            msg = f"unknown method {err.get('input')!r}; expected one of {', '.join(METHODS)}"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid job config: " + "; ".join(parts)


def parse_config(data: Any) -> JobConfig:
    """Validate a decoded config; any problem is one ``InvalidConfig`` naming every bad field."""
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise InvalidConfig(_format_validation_error(exc)) from None


def load_config(path: str | Path) -> JobConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidConfig(f"cannot read the job config {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidConfig(f"the job config {path} is not JSON: {exc}") from None
    return parse_config(data)


# --- from the QuantizedModel spec (called by the operator) --------------------------------------


@dataclass(frozen=True)
class JobMounts:
    """Where the Job's pod mounts each volume; the operator's Job builder must use the same paths."""

    output: str = "/output"
    scratch: str = "/scratch"
    base_model: str = "/models"
    calibration: str = "/calibration"
    config_dir: str = "/etc/dedicated/job"


#: Env variables the Job gets from ``secretKeyRef``s, one per distinct Secret key.
TOKEN_ENV_BASE = "HF_TOKEN"
TOKEN_ENV_OUTPUT = "HF_TOKEN_OUTPUT"
TOKEN_ENV_DATASET = "HF_TOKEN_DATASET"


def job_secret_env(spec: QuantizedModelSpec) -> dict[str, SecretKeyRef]:
    """``{env name: SecretKeyRef}`` for the Job's pod. A Secret key used twice gets one variable.

    The base model's token is always ``HF_TOKEN`` (the huggingface_hub convention); a different
    Secret for publishing or for the calibration dataset gets its own variable.
    """
    env: dict[str, SecretKeyRef] = {}

    def add(preferred: str, ref: SecretKeyRef | None) -> str | None:
        if ref is None:
            return None
        for name, existing in env.items():
            if (existing.name, existing.key) == (ref.name, ref.key):
                return name
        name = TOKEN_ENV_BASE if TOKEN_ENV_BASE not in env else preferred
        env[name] = ref
        return name

    add(TOKEN_ENV_BASE, spec.base.hub.token_secret_ref if spec.base.hub else None)
    add(TOKEN_ENV_OUTPUT, spec.output.hub.token_secret_ref if spec.output.hub else None)
    ds = spec.calibration.dataset if spec.calibration else None
    add(TOKEN_ENV_DATASET, ds.token_secret_ref if ds else None)
    return env


def job_volume_mounts(spec: QuantizedModelSpec, mounts: JobMounts = JobMounts()) -> list[tuple[str, str, bool]]:
    """``(claim name, mount path, read only)`` for every PVC the Job's pod needs."""
    out: list[tuple[str, str, bool]] = []
    if spec.output.volume is not None:
        out.append((spec.output.volume.claim_name, mounts.output, False))
    if spec.output.scratch_claim_name:
        out.append((spec.output.scratch_claim_name, mounts.scratch, False))
    if spec.base.volume is not None:
        out.append((spec.base.volume.claim_name, mounts.base_model, True))
    if spec.calibration.file is not None:
        out.append((spec.calibration.file.claim_name, mounts.calibration, True))
    return out


def _env_for(env: dict[str, SecretKeyRef], ref: SecretKeyRef | None) -> str | None:
    if ref is None:
        return None
    return next(name for name, r in env.items() if (r.name, r.key) == (ref.name, ref.key))


def _join(root: str, rel: str | None) -> str:
    return str(PurePosixPath(root) / rel) if rel else root


def job_config_from_spec(
    spec: QuantizedModelSpec,
    name: str,
    namespace: str,
    generation: int,
    *,
    mounts: JobMounts = JobMounts(),
) -> JobConfig:
    """The Job's config for one generation of a QuantizedModel (pure: no cluster, no I/O).

    An output volume without a path publishes into ``<claim>/<name>`` rather than the claim's root,
    because the atomic publish needs a sibling directory on the same filesystem to stage into.
    """
    env = job_secret_env(spec)
    if spec.base.hub is not None:
        hub = spec.base.hub
        model = ModelSource(hub=HubSource(repo=hub.repo, revision=hub.revision,
                                          token_env=_env_for(env, hub.token_secret_ref)))
    else:
        assert spec.base.volume is not None
        model = ModelSource(path=_join(mounts.base_model, spec.base.volume.path))

    cal = spec.calibration
    dataset = None
    if cal.dataset is not None:
        dataset = HubDatasetSource(repo=cal.dataset.repo, config=cal.dataset.config, split=cal.dataset.split,
                                   column=cal.dataset.column,
                                   token_env=_env_for(env, cal.dataset.token_secret_ref))
    calibration = CalibrationConfig(
        dataset=dataset,
        file=_join(mounts.calibration, cal.file.path) if cal.file is not None else None,
        num_samples=cal.num_samples, sequence_length=cal.sequence_length)

    if spec.output.volume is not None:
        rel = spec.output.volume.path or name
        output = OutputConfig(dir=_join(mounts.output, rel),
                              volume=VolumeOutput(claim_name=spec.output.volume.claim_name, path=rel))
    else:
        assert spec.output.hub is not None
        hub_out = spec.output.hub
        output = OutputConfig(dir=_join(mounts.scratch, f"{namespace}-{name}"),
                              hub=HubOutput(repo=hub_out.repo, private=hub_out.private,
                                            token_env=_env_for(env, hub_out.token_secret_ref) or TOKEN_ENV_BASE,
                                            commit_message=f"{namespace}/{name} generation {generation}"))

    method = spec.method.value
    default_quantize, default_keep = DEFAULT_MODULES[method]
    sel = spec.modules
    modules = ModuleSelection(
        quantize=list(sel.quantize) if sel and sel.quantize else list(default_quantize),
        keep_bf16=list(sel.keep_bf16) if sel and sel.keep_bf16 is not None else list(default_keep),
    )
    validation = ValidationConfig(
        enabled=spec.validation.enabled,
        max_perplexity_ratio=spec.validation.max_perplexity_ratio or DEFAULT_MAX_PPL_RATIO[spec.bits],
    )
    return JobConfig(name=name, namespace=namespace, generation=generation, model=model, method=method,
                     bits=spec.bits, group_size=spec.group_size, modules=modules, calibration=calibration,
                     output=output, validation=validation)
