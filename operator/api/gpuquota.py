"""``GPUQuota``: reserved and capped GPUs for one platform team (cluster-scoped).

A team is a set of namespaces (by name and/or label selector); the quota's name is the team's
name. Limits are per node pool or per GPU family:

* ``guaranteed``: GPUs reserved for the team; no other team (and no namespace outside any team)
  may claim them, even while the team leaves them unused.
* ``max``: the most the team may hold at once; unset means "no cap beyond the capacity that is
  not reserved for others".

The operator enforces the limits when it admits an endpoint's replicas or a quantization Job
(the admission webhook rejects early; the reconcile side is authoritative and serialised) and
reports used/free per scope in ``status``. The CRD lives in the same group as the other kinds but
is cluster-scoped, because a team spans namespaces and namespace users must not edit it.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from .common import DNS_LABEL, GPU_FAMILY, ApiModel, cel, count_set, exactly_one, k8s_extra
from .conditions import Condition
from .crd import AGE, Column, Kind, build_crd

#: A label key (optional DNS-subdomain prefix, then a name), as the API server checks it.
LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
             r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


# --- spec ---------------------------------------------------------------------------------------


class SelectorRequirement(ApiModel):
    """One ``matchExpressions`` entry of a Kubernetes label selector."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(
        cel("(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
            "spec.namespaces.selector.matchExpressions: In and NotIn need values; Exists and "
            "DoesNotExist take none", field_path=".values"),
    ))

    key: Annotated[str, Field(min_length=1, max_length=317, pattern=LABEL_KEY, description="Label key.")]
    operator: Annotated[Literal["In", "NotIn", "Exists", "DoesNotExist"], Field(
        description="`In`, `NotIn`, `Exists` or `DoesNotExist`.")]
    values: Annotated[list[Annotated[str, Field(max_length=63, pattern=LABEL_VALUE, description="A label value.")]] | None,
                      Field(max_length=64, description="Values for `In`/`NotIn`.")] = None

    @model_validator(mode="after")
    def _values_fit_operator(self) -> SelectorRequirement:
        if (self.operator in ("In", "NotIn")) != bool(self.values):
            raise ValueError("spec.namespaces.selector.matchExpressions: In and NotIn need values; "
                             "Exists and DoesNotExist take none")
        return self


class LabelSelector(ApiModel):
    """A Kubernetes label selector (``matchLabels`` and ``matchExpressions`` are ANDed)."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(
        cel("has(self.matchLabels) && size(self.matchLabels) > 0 || "
            "has(self.matchExpressions) && size(self.matchExpressions) > 0",
            "spec.namespaces.selector: an empty selector would select every namespace; "
            "name the labels of the team's namespaces"),
    ))

    match_labels: Annotated[dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]] | None,
                            Field(max_length=32, description="Labels a namespace must carry.",
                                  json_schema_extra=k8s_extra(cel(
                                      f"self.all(k, size(k) <= 317 && k.matches('{LABEL_KEY.replace(chr(92) + '.', '[.]')}'))",
                                      "spec.namespaces.selector.matchLabels: every key must be a valid label key")))] = None
    match_expressions: Annotated[list[SelectorRequirement] | None, Field(
        max_length=32, description="Set-based requirements on namespace labels.")] = None

    @model_validator(mode="after")
    def _not_empty(self) -> LabelSelector:
        for key in self.match_labels or {}:
            if len(key) > 317 or not re.match(LABEL_KEY, key):
                raise ValueError(f"spec.namespaces.selector.matchLabels: {key!r} is not a valid label key")
        if not self.match_labels and not self.match_expressions:
            raise ValueError("spec.namespaces.selector: an empty selector would select every namespace; "
                             "name the labels of the team's namespaces")
        return self


class TeamNamespaces(ApiModel):
    """The team's namespaces: listed names, a label selector, or both (their union)."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(
        cel("has(self.names) && size(self.names) > 0 || has(self.selector)",
            "spec.namespaces: set names, selector or both"),
    ))

    names: Annotated[list[Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="A namespace name.")]] | None,
                     Field(max_length=256, description="Namespaces by name (they need not exist yet).",
                           json_schema_extra={"x-kubernetes-list-type": "set"})] = None
    selector: Annotated[LabelSelector | None, Field(description="Namespaces whose labels match.")] = None

    @model_validator(mode="after")
    def _something(self) -> TeamNamespaces:
        if not self.names and self.selector is None:
            raise ValueError("spec.namespaces: set names, selector or both")
        return self


class QuotaLimit(ApiModel):
    """GPUs for the team in one scope: a node pool, or every pool of a GPU family."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(
        exactly_one(("pool", "gpuFamily"), "spec.limits[]"),
        cel("!has(self.max) || self.guaranteed <= self.max",
            "spec.limits[].guaranteed must be <= spec.limits[].max", field_path=".guaranteed"),
    ))

    pool: Annotated[str | None, Field(min_length=1, max_length=63, pattern=DNS_LABEL,
                                      description="A node pool of the operator's pool configuration.")] = None
    gpu_family: Annotated[str | None, Field(min_length=1, max_length=32, pattern=GPU_FAMILY,
                                            description="A GPU family (`ampere`, `hopper`, `blackwell`, ...): "
                                            "every pool of that family together.")] = None
    guaranteed: Annotated[int, Field(ge=0, le=100000, description=(
        "GPUs reserved for this team: nobody else may claim them, even while unused."))] = 0
    max: Annotated[int | None, Field(ge=0, le=100000, description=(
        "Most GPUs the team may hold in this scope at once; unset: no cap beyond what is not "
        "reserved for other teams."))] = None

    @model_validator(mode="after")
    def _consistent(self) -> QuotaLimit:
        if count_set(self, ("pool", "gpuFamily")) != 1:
            raise ValueError("spec.limits[]: set exactly one of pool, gpuFamily")
        if self.max is not None and self.guaranteed > self.max:
            raise ValueError("spec.limits[].guaranteed must be <= spec.limits[].max")
        return self

    @property
    def scope(self) -> tuple[str, str]:
        """``("pool", name)`` or ``("family", name)``."""
        return ("pool", self.pool) if self.pool is not None else ("family", self.gpu_family or "")


class UnlistedPools(StrEnum):
    """What the team may do on pools that no limit of this quota covers."""

    ALLOW = "Allow"
    DENY = "Deny"


class GPUQuotaSpec(ApiModel):
    """Which namespaces form the team and how many GPUs it is guaranteed and allowed."""

    model_config = ConfigDict(json_schema_extra=k8s_extra(
        cel("self.limits.all(a, self.limits.exists_one(b, "
            "(has(a.pool) && has(b.pool) && a.pool == b.pool) || "
            "(has(a.gpuFamily) && has(b.gpuFamily) && a.gpuFamily == b.gpuFamily)))",
            "spec.limits: each pool and each gpuFamily may appear only once", field_path=".limits"),
    ))

    namespaces: Annotated[TeamNamespaces, Field(description="The team's namespaces.")]
    limits: Annotated[list[QuotaLimit], Field(min_length=1, max_length=32,
                                              description="Guaranteed and maximum GPUs per pool or GPU family.")]
    unlisted_pools: Annotated[UnlistedPools, Field(description=(
        "`Allow`: pools no limit covers are usable without a cap (only other teams' guarantees "
        "apply); `Deny`: the team may use only the pools and families listed."))] = UnlistedPools.ALLOW
    mirror_resource_quota: Annotated[bool, Field(description=(
        "Also write a native ResourceQuota (`requests.nvidia.com/gpu`) into each of the team's "
        "namespaces, capping GPU requests of pods the operator did not create. Only possible when "
        "the team's total is bounded (every usable pool capped)."))] = True

    @model_validator(mode="after")
    def _unique_scopes(self) -> GPUQuotaSpec:
        seen: set[tuple[str, str]] = set()
        for limit in self.limits:
            if limit.scope in seen:
                raise ValueError("spec.limits: each pool and each gpuFamily may appear only once")
            seen.add(limit.scope)
        return self


# --- status -------------------------------------------------------------------------------------


class GPUQuotaConditionType(StrEnum):
    READY = "Ready"  # the quota is enforced as written
    NAMESPACE_CONFLICT = "NamespaceConflict"  # a namespace is also claimed by another quota
    OVERCOMMITTED = "Overcommitted"  # guarantees exceed what the pool/family has
    POOLS_RESOLVED = "PoolsResolved"  # every named pool/family exists and has nodes
    RESOURCE_QUOTA_MIRRORED = "ResourceQuotaMirrored"


class GPUQuotaReason(StrEnum):
    ENFORCED = "Enforced"
    NO_CONFLICT = "NoConflict"
    NAMESPACE_CLAIMED_TWICE = "NamespaceClaimedTwice"
    WITHIN_CAPACITY = "WithinCapacity"
    GUARANTEES_EXCEED_CAPACITY = "GuaranteesExceedCapacity"
    POOLS_FOUND = "PoolsFound"
    POOL_NOT_CONFIGURED = "PoolNotConfigured"
    FAMILY_NOT_CONFIGURED = "FamilyNotConfigured"
    POOL_HAS_NO_NODES = "PoolHasNoNodes"
    MIRRORED = "Mirrored"
    MIRROR_DISABLED = "MirrorDisabled"
    UNBOUNDED = "Unbounded"
    DEGRADED = "Degraded"


class ScopeUsage(ApiModel):
    """One limit's figures (GPUs)."""

    pool: Annotated[str | None, Field(max_length=63, description="The pool, for a pool limit.")] = None
    gpu_family: Annotated[str | None, Field(max_length=32, description="The family, for a family limit.")] = None
    capacity: Annotated[int, Field(ge=0, description="GPUs on the scope's nodes (allocatable).")]
    guaranteed: Annotated[int, Field(ge=0, description="GPUs reserved for this team.")]
    max: Annotated[int | None, Field(ge=0, description="The team's cap; unset: none.")] = None
    used: Annotated[int, Field(ge=0, description="GPUs the team holds (admitted endpoint replicas and "
                                                 "quantization Jobs).")]
    free: Annotated[int, Field(ge=0, description="GPUs the team could still claim now: its cap, its "
                                                 "unused guarantee and the capacity nobody reserved, "
                                                 "whichever is least.")]


class GPUQuotaStatus(ApiModel):
    """Observed state, written only by the operator."""

    observed_generation: Annotated[int | None, Field(ge=0, description="Last generation acted on.")] = None
    conditions: Annotated[list[Condition] | None, Field(
        max_length=16, description="Ready, NamespaceConflict, Overcommitted, PoolsResolved, "
        "ResourceQuotaMirrored.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})] = None
    namespaces: Annotated[list[Annotated[str, Field(max_length=63, description="A namespace.")]] | None, Field(
        max_length=1024, description="Namespaces this quota governs now (existing ones; conflicts excluded).")] = None
    usage: Annotated[list[ScopeUsage] | None, Field(max_length=32, description="Figures per limit, in "
                                                                               "the order of spec.limits.")] = None
    namespace_count: Annotated[int | None, Field(ge=0, description="How many namespaces it governs.")] = None
    used: Annotated[str | None, Field(max_length=1024, description="Used of max per scope, for the printer "
                                                                   "column, e.g. `hopper 14/16`.")] = None
    free: Annotated[str | None, Field(max_length=1024, description="Free per scope, for the printer column.")] = None
    used_gpus: Annotated[int | None, Field(ge=0, description="GPUs the team holds, all pools together.")] = None
    claims: Annotated[int | None, Field(ge=0, description="Endpoints and Jobs holding the team's GPUs.")] = None


class GPUQuota(ApiModel):
    """The whole object as stored (metadata untyped)."""

    model_config = ConfigDict(extra="ignore")

    spec: GPUQuotaSpec
    status: GPUQuotaStatus | None = None


GPU_QUOTA = Kind(
    kind="GPUQuota",
    plural="gpuquotas",
    singular="gpuquota",
    short_names=("gq", "gpuq"),
    spec=GPUQuotaSpec,
    status=GPUQuotaStatus,
    description="Reserved (guaranteed) and capped GPUs per node pool or GPU family for one platform "
    "team, a set of namespaces. Cluster-scoped; the name is the team's name.",
    columns=(
        Column("Namespaces", "integer", ".status.namespaceCount", "Namespaces the quota governs now."),
        Column("Used", "string", ".status.used", "GPUs used of the cap, per scope."),
        Column("Free", "string", ".status.free", "GPUs the team can still claim, per scope."),
        Column("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Enforced as written."),
        AGE,
        Column("GPUs", "integer", ".status.usedGpus", "GPUs held, all scopes.", 1),
        Column("Claims", "integer", ".status.claims", "Endpoints and Jobs holding GPUs.", 1),
        Column("Reason", "string", '.status.conditions[?(@.type=="Ready")].reason', "Why (not) ready.", 1),
    ),
)

#: Team names are label values and must never collide with the ``ns.<namespace>`` fallback
#: team of a namespace outside every quota, hence a DNS label (no dots).
NAME_RULE = cel("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && "
                "size(self.metadata.name) <= 63",
                "metadata.name: a GPUQuota is named after its team: a DNS label of at most 63 "
                "characters (lowercase letters, digits, '-'; no dots)")


def gpuquota_crd() -> dict[str, Any]:
    """The GPUQuota CRD: the shared assembly, made cluster-scoped, plus the name rule."""
    crd = build_crd(GPU_QUOTA)
    crd["spec"]["scope"] = "Cluster"
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["x-kubernetes-validations"] = [NAME_RULE]
    return crd


def reference_markdown() -> str:
    """The GPUQuota reference in docs/api.md's style (fields, constraints, columns), one heading
    level down, for the GPU quota section of docs/operations.md (a unit test keeps it current)."""
    from .docs import _kind_section

    lines = _kind_section(GPU_QUOTA)
    lines = [f"#{line}" if line.startswith("#") else line for line in lines]
    lines[0] = "### GPUQuota reference"
    lines.insert(2, "Cluster-scoped; `metadata.name` is the team's name: a DNS label of at most 63 characters "
                    "(CEL rule on the object).")
    lines.insert(3, "")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # python -m dedicated.operator.api.gpuquota > reference.md
    print(reference_markdown(), end="")


__all__ = ["GPU_QUOTA", "GPUQuota", "GPUQuotaConditionType", "GPUQuotaReason", "GPUQuotaSpec",
           "GPUQuotaStatus", "LabelSelector", "QuotaLimit", "ScopeUsage", "SelectorRequirement",
           "TeamNamespaces", "UnlistedPools", "gpuquota_crd", "reference_markdown"]
