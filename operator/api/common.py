"""Building blocks shared by both custom resources: references, model sources, validated strings.

Every string that ends up in a container argument, a volume path or an image reference is
constrained here by a strict pattern, so the API server rejects it at ``kubectl apply`` and no
later stage has to sanitise it again. Patterns use only the regex subset that Go's RE2 (the API
server), ECMA-262 and Python's ``re`` agree on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# --- patterns -----------------------------------------------------------------------------------

#: RFC 1123 label (Secret keys excluded): names of pools, PVCs, Secrets, QuantizedModels.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: RFC 1123 subdomain: Kubernetes object names (Secrets, PVCs, QuantizedModels).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A Secret data key (same rule as the API server's for ConfigMap/Secret keys).
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
#: A Hugging Face repo id "owner/name": the Hub's own character set, no leading/trailing punctuation.
HUB_REPO = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?/[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"
#: A Hub revision: branch, tag or commit sha. No leading '-' (never parsed as an option).
HUB_REVISION = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"
#: A relative path inside a volume: segments of safe characters, never absolute.
REL_PATH = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"
#: The name vLLM serves the model under (OpenAI "model" field).
SERVED_NAME = r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$"
#: A container image reference: registry/path[:tag][@sha256:digest], lowercase repository path.
IMAGE_REF = (
    r"^[a-z0-9]+([._-][a-z0-9]+)*(\.[a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
#: A Kubernetes resource quantity (the API server's own regex, simplified to decimal/binary SI).
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
#: A GPU family label value as GPU Feature Discovery writes it (ampere, hopper, blackwell, ...).
GPU_FAMILY = r"^[a-z][a-z0-9-]*$"
#: A module-name regular expression for quantize/keep lists (no whitespace, nothing else assumed).
MODULE_PATTERN = r"^\S+$"

# CEL snippets reused by several string fields: the pattern alone cannot forbid '..' segments.
NO_DOT_DOT = "!self.contains('..')"


def _no_dot_dot(value: str | None) -> str | None:
    """Python twin of the CEL rule, so models built in-process refuse what the API server would."""
    if value is not None and ".." in value:
        raise ValueError(f"{value!r} must not contain '..'")
    return value


def _no_double_dash(value: str) -> str:
    if "--" in value:
        raise ValueError(f"{value!r} must not contain '--'")
    return value


NoDotDot = AfterValidator(_no_dot_dot)
NoDoubleDash = AfterValidator(_no_double_dash)


def cel(rule: str, message: str, *, field_path: str | None = None, reason: str | None = None) -> dict:
    """One ``x-kubernetes-validations`` entry; ``message`` must name the field it is about."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def k8s_extra(*rules: dict, **extra: Any) -> dict:
    """``json_schema_extra`` for a model or field: CEL rules plus any ``x-kubernetes-*`` keys."""
    out: dict[str, Any] = dict(extra)
    if rules:
        out["x-kubernetes-validations"] = list(rules)
    return out


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, snake_case in Python, unknown keys refused.

    The API server already prunes unknown fields, so ``forbid`` only bites on objects built by hand
    (examples, tests), which is where a typo should fail loudly.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
        validate_default=True,
    )

    def to_k8s(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class FeatureMode(StrEnum):
    """A serving option the planner may decide: ``auto`` lets it choose by what fits."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


# --- references ---------------------------------------------------------------------------------


class SecretKeyRef(ApiModel):
    """A key of a Secret in the resource's own namespace; the value is never copied anywhere."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                               description="Name of the Secret, in the same namespace.")]
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=SECRET_KEY,
                              description="Key inside the Secret that holds the Hugging Face token.")] = "token"


class LocalObjectRef(ApiModel):
    """A same-namespace object by name (cross-namespace references are not allowed)."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                               description="Name of the object in the same namespace.")]


class HubModel(ApiModel):
    """A model repository on the Hugging Face Hub."""

    repo: Annotated[str, Field(
        min_length=3, max_length=96, pattern=HUB_REPO,
        description="Repository id, `owner/name` (e.g. `Qwen/Qwen3-8B`).",
        json_schema_extra=k8s_extra(cel("!self.contains('..') && !self.contains('--')",
                                        "repo must not contain '..' or '--'"))), NoDotDot, NoDoubleDash]
    revision: Annotated[str | None, Field(
        min_length=1, max_length=255, pattern=HUB_REVISION,
        description="Branch, tag or commit; the repository's default branch when unset.",
        json_schema_extra=k8s_extra(cel(NO_DOT_DOT, "revision must not contain '..'"))), NoDotDot] = None
    token_secret_ref: Annotated[SecretKeyRef | None, Field(
        description="Secret key holding a Hub token for gated or private repos. Passed to pods "
        "through `secretKeyRef`, never as a literal.")] = None


class VolumeModel(ApiModel):
    """Files on a PersistentVolumeClaim in the same namespace."""

    claim_name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                                     description="Name of the PersistentVolumeClaim.")]
    path: Annotated[str | None, Field(
        min_length=1, max_length=1024, pattern=REL_PATH,
        description="Directory inside the volume, relative to its root; the volume root when unset.",
        json_schema_extra=k8s_extra(cel(NO_DOT_DOT, "path must not contain '..'"))), NoDotDot] = None


def count_set(obj: BaseModel, fields: tuple[str, ...]) -> int:
    """How many of the (camelCase) ``fields`` are set on ``obj``: the Python twin of the CEL rules."""
    by_alias = {info.alias or name: name for name, info in type(obj).model_fields.items()}
    return sum(getattr(obj, by_alias[f]) is not None for f in fields)


def exactly_one(fields: tuple[str, ...], where: str) -> dict:
    """A CEL rule: exactly one of ``fields`` is set on this object."""
    has = ", ".join(f"has(self.{f})" for f in fields)
    return cel(f"[{has}].filter(x, x).size() == 1",
               f"{where}: set exactly one of {', '.join(fields)}")


def at_most_one(fields: tuple[str, ...], where: str) -> dict:
    """A CEL rule: at most one of ``fields`` is set on this object."""
    has = ", ".join(f"has(self.{f})" for f in fields)
    return cel(f"[{has}].filter(x, x).size() <= 1",
               f"{where}: set at most one of {', '.join(fields)}")
