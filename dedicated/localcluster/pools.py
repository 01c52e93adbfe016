"""The GPU node-pool file: its schema, and loading it with errors that point at the bad field.

Why pydantic with strict types: the file is written by hand, and YAML silently turns `9.0` into a
float or `"8"` into a string; a strict schema turns those into an error naming the pool and the
field instead of a node with a wrong label. The operator reads the same pool fields (``GpuPool``);
``nodes`` and ``node`` only matter to the local cluster.
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

DEFAULT_POOLS_FILE = Path(__file__).with_name("gpu-pools.yaml")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")

# Compute-capability majors of the GPU families GFD names; a mismatch is almost always a typo.
FAMILY_COMPUTE_MAJORS: dict[str, tuple[int, ...]] = {
    "volta": (7,),
    "turing": (7,),
    "ampere": (8,),
    "ada-lovelace": (8,),
    "hopper": (9,),
    "blackwell": (10, 11, 12),
}

# Every simulated node gets an address in 198.19.0.0/24 and a pod range 198.19.<n>.0/24: the
# benchmarking range (RFC 2544) is never routed, so no simulated address can reach a real host.
MAX_SIMULATED_NODES = 254


def _check_label_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise ValueError(f"label key {key!r}: prefix {prefix!r} is not a DNS subdomain")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        raise ValueError(f"label key {key!r}: name part {name!r} is not a valid label name")
    return key


def _check_label_value(value: str, what: str) -> str:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ValueError(
            f"{what} {value!r} is not a valid Kubernetes label value (at most 63 characters: "
            "letters, digits, '-', '_', '.', starting and ending with a letter or digit)"
        )
    return value


class Toleration(BaseModel):
    """A pod toleration, as Kubernetes spells it; the local cluster also turns it into a taint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: StrictStr = ""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: StrictStr = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    tolerationSeconds: StrictInt | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.key:
            _check_label_key(self.key)
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists must not have a value")
        if self.operator == "Equal" and not self.key:
            raise ValueError("a toleration with operator Equal needs a key")
        _check_label_value(self.value, "toleration value")
        return self

    def as_k8s(self) -> dict[str, Any]:
        return self.model_dump(exclude_defaults=True) | {"operator": self.operator}


class NodeShape(BaseModel):
    """What a simulated node has besides its GPUs (local cluster only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: StrictStr = "64"
    memory: StrictStr = "512Gi"
    pods: StrictInt = Field(110, ge=1)
    ephemeralStorage: StrictStr = "1Ti"
    arch: Literal["amd64", "arm64"] = "amd64"

    @field_validator("cpu", "memory", "ephemeralStorage")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not _QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity such as '64', '512Gi', '2Ti'")
        return value


class GpuPool(BaseModel):
    """One GPU node pool: what its GPUs are, how pods are steered onto it, what it costs."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: StrictStr
    gpu_family: StrictStr = Field(alias="gpuFamily")
    gpu_product: StrictStr = Field(alias="gpuProduct")
    gpu_memory_mib: StrictInt = Field(alias="gpuMemoryMiB", gt=0)
    gpus_per_node: StrictInt = Field(alias="gpusPerNode", gt=0)
    compute_capability: StrictStr = Field(alias="computeCapability")
    unified_memory: StrictBool = Field(False, alias="unifiedMemory")
    cost_per_gpu_hour: Annotated[float, Field(ge=0, strict=False)] = Field(alias="costPerGpuHour")
    node_selector: dict[StrictStr, StrictStr] = Field(alias="nodeSelector")
    tolerations: tuple[Toleration, ...] = ()
    nodes: StrictInt = Field(0, ge=0)
    node: NodeShape = NodeShape()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if len(value) > 50 or not _DNS_LABEL.match(value):
            raise ValueError(
                f"pool name {value!r} must be a DNS label of at most 50 characters "
                "(lowercase letters, digits, '-'), since node names are built from it"
            )
        return value

    @field_validator("gpu_family")
    @classmethod
    def _family(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError(f"gpuFamily {value!r} must be lowercase like GFD's 'ampere', 'hopper'")
        return value

    @field_validator("gpu_product")
    @classmethod
    def _product(cls, value: str) -> str:
        if not value:
            raise ValueError("gpuProduct must not be empty")
        return _check_label_value(value, "gpuProduct")

    @field_validator("compute_capability", mode="before")
    @classmethod
    def _capability_is_text(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ValueError(
                f"computeCapability must be a quoted string such as \"9.0\" or \"12.1\", not the "
                f"number {value!r} (YAML reads 12.10 and 12.1 as the same number)"
            )
        return value

    @field_validator("compute_capability")
    @classmethod
    def _capability(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9]+\.[0-9]+", value):
            raise ValueError(f"computeCapability {value!r} must look like \"9.0\" or \"12.1\"")
        return value

    @field_validator("node_selector")
    @classmethod
    def _selector(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("nodeSelector must name at least one label that only this pool's nodes carry")
        for key, label in value.items():
            _check_label_key(key)
            _check_label_value(label, f"nodeSelector[{key!r}]")
        return value

    @model_validator(mode="after")
    def _family_matches_capability(self) -> GpuPool:
        majors = FAMILY_COMPUTE_MAJORS.get(self.gpu_family)
        if majors is not None and self.compute_major not in majors:
            raise ValueError(
                f"computeCapability {self.compute_capability} does not belong to the "
                f"{self.gpu_family} family (expected major {' or '.join(map(str, majors))})"
            )
        return self

    @property
    def compute_major(self) -> int:
        return int(self.compute_capability.split(".")[0])

    @property
    def compute_minor(self) -> int:
        return int(self.compute_capability.split(".")[1])


SYSTEM_POOL = "system"


class SystemNodes(BaseModel):
    """Untainted nodes without GPUs (local cluster only): where the operator, webhooks and other
    non-GPU pods run, as on the system node pool of a real cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: StrictInt = Field(2, ge=0)
    node: NodeShape = NodeShape(cpu="16", memory="64Gi", ephemeralStorage="500Gi")


class PoolFile(BaseModel):
    """The whole file: a list of pools with unique names and distinguishable selectors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    pools: tuple[GpuPool, ...]
    system_nodes: SystemNodes = Field(SystemNodes(), alias="systemNodes")

    @model_validator(mode="after")
    def _unique(self) -> PoolFile:
        if not self.pools:
            raise ValueError("the file declares no pool")
        seen: dict[str, int] = {SYSTEM_POOL: -1}
        selectors: dict[tuple[tuple[str, str], ...], str] = {}
        for index, pool in enumerate(self.pools):
            if pool.name == SYSTEM_POOL:
                raise ValueError(f"pools[{index}]: the name {SYSTEM_POOL!r} is reserved for the systemNodes")
            if pool.name in seen:
                raise ValueError(f"pool name {pool.name!r} is used twice (pools[{seen[pool.name]}] and pools[{index}])")
            seen[pool.name] = index
            selector = tuple(sorted(pool.node_selector.items()))
            if selector in selectors:
                raise ValueError(
                    f"pools {selectors[selector]!r} and {pool.name!r} have the same nodeSelector, "
                    "so pods could not be steered to one of them"
                )
            selectors[selector] = pool.name
        total = sum(pool.nodes for pool in self.pools) + self.system_nodes.nodes
        if total > MAX_SIMULATED_NODES:
            raise ValueError(f"{total} simulated nodes in all; the local cluster supports at most {MAX_SIMULATED_NODES}")
        return self


class PoolFileError(ValueError):
    """A pool file that cannot be used; the message names the file, the pool and the field."""


def _describe(error: ValidationError, raw: Any) -> str:
    lines = []
    for item in error.errors():
        location = list(item["loc"])
        where = ""
        if len(location) >= 2 and location[0] == "pools" and isinstance(location[1], int):
            index = location[1]
            try:
                name = raw["pools"][index].get("name")
            except (KeyError, IndexError, TypeError, AttributeError):
                name = None
            where = f"pools[{index}]" + (f" ({name})" if name else "")
            location = location[2:]
        path = ".".join(str(part) for part in location)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling against docs/local-cluster.md)"
        elif item["type"] == "missing":
            message = "required field is missing"
        lines.append(f"  {where}{'.' if where and path else ''}{path}: {message}")
    return "\n".join(lines)


def parse_pools(data: Mapping[str, Any] | Any, source: str = "<pools>") -> PoolFile:
    """Validate already-loaded YAML; raise PoolFileError with one line per problem."""
    if not isinstance(data, Mapping) or "pools" not in data:
        raise PoolFileError(f"{source}: expected a mapping with a 'pools:' list at the top")
    try:
        return PoolFile.model_validate(data)
    except ValidationError as error:
        raise PoolFileError(f"{source}: invalid GPU pool file:\n{_describe(error, data)}") from None


def load_pools(path: str | Path | None = None) -> PoolFile:
    """Read and validate a pool file (the packaged gpu-pools.yaml by default)."""
    path = Path(path) if path else DEFAULT_POOLS_FILE
    try:
        text = path.read_text()
    except OSError as error:
        raise PoolFileError(f"cannot read GPU pool file {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PoolFileError(f"{path}: not valid YAML: {error}") from None
    return parse_pools(data, str(path))
