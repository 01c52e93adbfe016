"""CRD metadata: group, version, names, printer columns, subresources; and the CRD assembly.

Printer columns read only ``.spec``/``.status`` paths that the models define; a unit test walks
every ``jsonPath`` through the generated schema so a renamed field cannot leave an empty column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .endpoint import DedicatedEndpointSpec, DedicatedEndpointStatus
from .quantizedmodel import QuantizedModelSpec, QuantizedModelStatus
from .schema import structural_schema

GROUP = "llm.dedicated.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "dedicated"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # string | integer | number | boolean | date
    json_path: str
    description: str
    priority: int = 0  # 1: only with `kubectl get -o wide`

    def to_k8s(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path,
                               "description": self.description}
        if self.priority:
            out["priority"] = self.priority
        return out


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    columns: tuple[Column, ...]
    scale: dict[str, str] | None = None
    categories: tuple[str, ...] = field(default=(CATEGORY,))

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


AGE = Column("Age", "date", ".metadata.creationTimestamp", "Time since creation.")

DEDICATED_ENDPOINT = Kind(
    kind="DedicatedEndpoint",
    plural="dedicatedendpoints",
    singular="dedicatedendpoint",
    short_names=("dep", "dedep"),
    spec=DedicatedEndpointSpec,
    status=DedicatedEndpointStatus,
    description="A dedicated, quantized LLM endpoint: vLLM replicas on reserved GPUs, planned to fit.",
    columns=(
        Column("Model", "string", ".status.model", "The model being served."),
        Column("Pool", "string", ".status.plan.pool", "Node pool chosen by the planner."),
        Column("GPU", "string", ".status.plan.gpuProduct", "GPU product of the pool."),
        Column("GPUs", "integer", ".status.plan.gpusPerReplica", "GPUs per replica."),
        Column("Ready", "integer", ".status.readyReplicas", "Replicas passing readiness."),
        Column("Desired", "integer", ".spec.replicas", "Desired replicas."),
        Column("Phase", "string", ".status.phase", "Summary of the conditions."),
        AGE,
        Column("URL", "string", ".status.url", "In-cluster OpenAI-compatible base URL.", 1),
        Column("Text-Only", "boolean", ".status.plan.textOnly", "Vision encoder skipped.", 1),
        Column("MTP", "boolean", ".status.plan.mtp", "MTP speculative decoding on.", 1),
        Column("TP", "integer", ".status.plan.tensorParallelSize", "Tensor-parallel size.", 1),
        Column("Max-Len", "integer", ".status.plan.maxModelLen", "vLLM --max-model-len.", 1),
    ),
    scale={
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    },
)

QUANTIZED_MODEL = Kind(
    kind="QuantizedModel",
    plural="quantizedmodels",
    singular="quantizedmodel",
    short_names=("qm",),
    spec=QuantizedModelSpec,
    status=QuantizedModelStatus,
    description="A base model quantized (GSQ 2-bit or AutoRound) by a GPU Job and published.",
    columns=(
        Column("Method", "string", ".spec.method", "Quantization method."),
        Column("Bits", "integer", ".spec.bits", "Weight bit width."),
        Column("Phase", "string", ".status.phase", "Summary of the conditions."),
        Column("Progress", "string", ".status.progress.summary", "Stage and layer progress."),
        AGE,
        Column("Artifact", "string", ".status.artifact.location", "Published checkpoint location.", 1),
    ),
)

KINDS: tuple[Kind, ...] = (DEDICATED_ENDPOINT, QUANTIZED_MODEL)


def openapi_schema(kind: Kind) -> dict[str, Any]:
    """The whole object's schema: apiVersion/kind/metadata plus the generated spec and status."""
    return {
        "description": kind.description,
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": structural_schema(kind.spec),
            "status": structural_schema(kind.status),
        },
        "required": ["spec"],
    }


def build_crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition manifest for ``kind``."""
    subresources: dict[str, Any] = {"status": {}}
    if kind.scale:
        subresources["scale"] = dict(kind.scale)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name, "labels": {"app.kubernetes.io/part-of": "dedicated-endpoints"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": list(kind.categories),
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": openapi_schema(kind)},
                "subresources": subresources,
                "additionalPrinterColumns": [c.to_k8s() for c in kind.columns],
            }],
        },
    }
