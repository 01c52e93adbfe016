"""Pure Kubernetes object builders: (endpoint spec, plan, model source, images, owner) -> manifests."""

from .model_source import ResolvedModel, resolve_model
from .naming import (
    SPEC_HASH_ANNOTATION,
    Owner,
    common_labels,
    endpoint_url,
    selector_labels,
    selector_string,
    service_name,
)
from .serving import (
    ServingObjects,
    build_deployment,
    build_service,
    build_serving,
    serving_args,
    shm_gib,
    spec_hash,
    startup_budget_seconds,
)

__all__ = [
    "SPEC_HASH_ANNOTATION", "Owner", "ResolvedModel", "ServingObjects", "build_deployment", "build_service",
    "build_serving", "common_labels", "endpoint_url", "resolve_model", "selector_labels", "selector_string",
    "service_name", "serving_args", "shm_gib", "spec_hash", "startup_budget_seconds",
]
