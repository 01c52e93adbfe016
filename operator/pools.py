"""The node-pool configuration the operator plans against (a YAML file or a ConfigMap key).

The platform team declares each GPU pool once: what its GPUs are (family, product, memory,
compute capability, unified memory), how pods are steered onto it (nodeSelector, tolerations)
and what a GPU-hour costs there (the planner's ranking key). The local cluster's simulated pools
file has the same fields plus ``nodes``/``node``, which the operator accepts and ignores, so one
file serves both. Everything else unknown is an error: a typo such as ``gpuMemoryMib`` must not
silently become "no memory".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_CAPABILITY = re.compile(r"^[0-9]{1,2}\.[0-9]{1,2}$")

#: Compute-capability majors per GPU Feature Discovery family name; a mismatch is a typo.
FAMILY_MAJORS: dict[str, tuple[int, ...]] = {
    "pascal": (6,), "volta": (7,), "turing": (7,), "ampere": (8,), "ada-lovelace": (8,),
    "hopper": (9,), "blackwell": (10, 11, 12),
}


class PoolConfigError(ValueError):
    """The pool configuration cannot be used; the message names the pool and the field."""


def _label_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise ValueError(f"label key {key!r}: prefix {prefix!r} is not a DNS subdomain")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        raise ValueError(f"label key {key!r}: {name!r} is not a valid label name")
    return key


def _label_value(value: str, what: str) -> str:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ValueError(f"{what} {value!r} is not a valid label value (<= 63 characters: letters, "
                         "digits, '-', '_', '.', starting and ending alphanumeric)")
    return value


class PoolToleration(BaseModel):
    """A pod toleration, spelled as in the Pod API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: StrictStr | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: StrictStr | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: StrictInt | None = Field(default=None, ge=0)  # noqa: N815 (Pod API spelling)

    @model_validator(mode="after")
    def _valid(self) -> PoolToleration:
        if self.key:
            _label_key(self.key)
        if self.operator == "Exists" and self.value:
            raise ValueError("operator Exists takes no value")
        if self.operator == "Equal" and not self.key:
            raise ValueError("operator Equal needs a key")
        if self.value:
            _label_value(self.value, "toleration value")
        if self.tolerationSeconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds applies only to effect NoExecute")
        return self

    def to_k8s(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class NodePool(BaseModel):
    """One pool of identical GPU nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: Annotated[StrictStr, Field(min_length=1, max_length=63)]
    gpu_family: StrictStr = Field(alias="gpuFamily")
    gpu_product: StrictStr = Field(alias="gpuProduct", min_length=1)
    gpu_memory_mib: StrictInt = Field(alias="gpuMemoryMiB", gt=0, le=4 * 1024 * 1024)
    gpus_per_node: StrictInt = Field(alias="gpusPerNode", ge=1, le=64)
    compute_capability: StrictStr = Field(alias="computeCapability")
    unified_memory: StrictBool = Field(False, alias="unifiedMemory")
    cost_per_gpu_hour: float = Field(alias="costPerGpuHour", ge=0)
    node_selector: dict[StrictStr, StrictStr] = Field(alias="nodeSelector")
    tolerations: tuple[PoolToleration, ...] = ()
    # Local-cluster-only fields, accepted so the simulated pools file loads as it is; unused here.
    nodes: Any = Field(default=None, exclude=True)
    node: Any = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError(f"{value!r} must be a DNS label (lowercase letters, digits, '-')")
        return value

    @field_validator("gpu_family")
    @classmethod
    def _family(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError(f"{value!r} must be lowercase as GPU Feature Discovery writes it "
                             "(ampere, hopper, blackwell, ...)")
        return value

    @field_validator("gpu_product")
    @classmethod
    def _product(cls, value: str) -> str:
        return _label_value(value, "gpuProduct")

    @field_validator("cost_per_gpu_hour", mode="before")
    @classmethod
    def _cost_is_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"costPerGpuHour must be a number, not {value!r}")
        return value

    @field_validator("compute_capability", mode="before")
    @classmethod
    def _capability_is_text(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ValueError(f'must be a quoted string such as "9.0" or "12.1", not the number {value!r} '
                             "(YAML reads 12.10 and 12.1 as the same number)")
        return value

    @field_validator("compute_capability")
    @classmethod
    def _capability(cls, value: str) -> str:
        if not _CAPABILITY.match(value):
            raise ValueError(f'{value!r} must look like "8.0", "9.0" or "12.1"')
        return value

    @field_validator("node_selector")
    @classmethod
    def _selector(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("must name at least one label that only this pool's nodes carry")
        for key, label in value.items():
            _label_key(key)
            _label_value(label, f"nodeSelector[{key!r}]")
        return value

    @model_validator(mode="after")
    def _family_matches_capability(self) -> NodePool:
        majors = FAMILY_MAJORS.get(self.gpu_family)
        if majors is not None and self.capability[0] not in majors:
            raise ValueError(f"computeCapability {self.compute_capability} is not a {self.gpu_family} "
                             f"GPU (expected major {' or '.join(map(str, majors))})")
        return self

    @property
    def capability(self) -> tuple[int, int]:
        """Compute capability as a comparable tuple, e.g. (12, 1)."""
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)

    @property
    def gpu_memory_gib(self) -> float:
        return self.gpu_memory_mib / 1024

    def tolerations_k8s(self) -> list[dict[str, Any]]:
        return [t.to_k8s() for t in self.tolerations]


class PoolConfig(BaseModel):
    """All pools, unique by name and by node selector.

    Only ``pools`` is read; other top-level keys belong to other readers of the same file (the
    local cluster's ``systemNodes``) and are ignored. Inside a pool, unknown keys are errors.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    pools: tuple[NodePool, ...]

    @model_validator(mode="after")
    def _unique(self) -> PoolConfig:
        if not self.pools:
            raise ValueError("no pool declared")
        names: dict[str, int] = {}
        selectors: dict[tuple[tuple[str, str], ...], str] = {}
        for i, pool in enumerate(self.pools):
            if pool.name in names:
                raise ValueError(f"pool name {pool.name!r} is used twice (pools[{names[pool.name]}] and pools[{i}])")
            names[pool.name] = i
            key = tuple(sorted(pool.node_selector.items()))
            if key in selectors:
                raise ValueError(f"pools {selectors[key]!r} and {pool.name!r} have the same nodeSelector")
            selectors[key] = pool.name
        return self

    def get(self, name: str) -> NodePool | None:
        return next((p for p in self.pools if p.name == name), None)


def _describe(error: ValidationError, raw: Any) -> str:
    lines = []
    for item in error.errors():
        loc = list(item["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "pools" and isinstance(loc[1], int):
            name = None
            try:
                name = raw["pools"][loc[1]].get("name")
            except (KeyError, IndexError, TypeError, AttributeError):
                pass
            where = f"pools[{loc[1]}]" + (f" ({name})" if name else "")
            loc = loc[2:]
        field = ".".join(str(p) for p in loc)
        msg = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}{'.' if where and field else ''}{field}: {msg}" if (where or field) else msg)
    return "; ".join(lines)


def parse_pools(raw: Any, source: str = "pool configuration") -> PoolConfig:
    """Validate already-parsed YAML/JSON (a mapping with ``pools``, or a bare list of pools)."""
    if isinstance(raw, list):
        raw = {"pools": raw}
    if not isinstance(raw, Mapping):
        raise PoolConfigError(f"{source}: expected a mapping with a 'pools' list, got {type(raw).__name__}")
    try:
        return PoolConfig.model_validate(raw)
    except ValidationError as err:
        raise PoolConfigError(f"{source}: {_describe(err, raw)}") from None


def load_pools_text(text: str, source: str = "pool configuration") -> PoolConfig:
    """Parse YAML text (a file's or a ConfigMap key's content)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PoolConfigError(f"{source}: not valid YAML: {err}") from None
    return parse_pools(raw, source)


def load_pools(path: str | Path) -> PoolConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise PoolConfigError(f"{path}: cannot read the pool configuration: {err.strerror}") from None
    return load_pools_text(text, str(path))
