"""The operator's API: pydantic models for both custom resources, the one source of truth from
which ``crds/*.yaml`` and ``docs/api.md`` are generated (``dedicated crds generate``)."""

from .common import FeatureMode, HubModel, LocalObjectRef, SecretKeyRef, VolumeModel
from .conditions import Condition, ConditionStatus, get_condition, set_condition
from .crd import API_VERSION, DEDICATED_ENDPOINT, GROUP, KINDS, QUANTIZED_MODEL, VERSION
from .endpoint import (
    DedicatedEndpoint,
    DedicatedEndpointSpec,
    DedicatedEndpointStatus,
    EndpointConditionType,
    EndpointPhase,
    EndpointReason,
    PlanStatus,
)
from .quantizedmodel import (
    QuantizedModel,
    QuantizedModelConditionType,
    QuantizedModelPhase,
    QuantizedModelReason,
    QuantizedModelSpec,
    QuantizedModelStatus,
)

__all__ = [
    "API_VERSION", "DEDICATED_ENDPOINT", "GROUP", "KINDS", "QUANTIZED_MODEL", "VERSION",
    "Condition", "ConditionStatus", "DedicatedEndpoint", "DedicatedEndpointSpec",
    "DedicatedEndpointStatus", "EndpointConditionType", "EndpointPhase", "EndpointReason",
    "FeatureMode", "HubModel", "LocalObjectRef", "PlanStatus", "QuantizedModel",
    "QuantizedModelConditionType", "QuantizedModelPhase", "QuantizedModelReason",
    "QuantizedModelSpec", "QuantizedModelStatus", "SecretKeyRef", "VolumeModel",
    "get_condition", "set_condition",
]
