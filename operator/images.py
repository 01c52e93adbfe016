"""Every container image the operator starts, in one place, with pinned defaults.

The Helm chart (or any deployment of the operator) overrides them through environment variables
or a mapping (a ConfigMap / chart values section); nothing else in the operator names an image.
Defaults are pinned tags, never ``latest``, so a restart of the operator cannot change what runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Literal

from .api.common import IMAGE_REF

#: vLLM 0.33.0 + humming-kernels + the Humming MoE shard fix: the tag images/serving/Dockerfile builds.
DEFAULT_SERVING_IMAGE = "dedicated-serving:0.33.0-humming"
#: The quantization Job image (images/quantize).
DEFAULT_QUANTIZE_IMAGE = "dedicated-quantize:0.1.0"
#: The operator itself (images/operator).
DEFAULT_OPERATOR_IMAGE = "dedicated-operator:0.1.0"

_IMAGE = re.compile(IMAGE_REF)
_ENV = {"serving": "DEDICATED_SERVING_IMAGE", "quantize": "DEDICATED_QUANTIZE_IMAGE",
        "operator": "DEDICATED_OPERATOR_IMAGE", "pull_policy": "DEDICATED_IMAGE_PULL_POLICY",
        "runtime_class_name": "DEDICATED_GPU_RUNTIME_CLASS"}


@dataclass(frozen=True)
class ImageConfig:
    serving: str = DEFAULT_SERVING_IMAGE
    quantize: str = DEFAULT_QUANTIZE_IMAGE
    operator: str = DEFAULT_OPERATOR_IMAGE
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    #: RuntimeClass for GPU pods where the NVIDIA runtime is not the node default (e.g. "nvidia").
    runtime_class_name: str | None = None

    def __post_init__(self) -> None:
        for name in ("serving", "quantize", "operator"):
            value = getattr(self, name)
            if not _IMAGE.match(value) or value.endswith(":latest"):
                raise ValueError(f"{name} image {value!r} is not a pinned image reference "
                                 "(registry/path:tag or @sha256:digest, never :latest)")
        if self.pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise ValueError(f"pull policy {self.pull_policy!r} must be Always, IfNotPresent or Never")
        if self.runtime_class_name is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", self.runtime_class_name):
            raise ValueError(f"runtime class {self.runtime_class_name!r} is not a valid name")

    def with_serving(self, image: str | None) -> ImageConfig:
        """The per-endpoint ``spec.image`` override (already validated by the CRD pattern)."""
        return replace(self, serving=image) if image else self


def image_config(overrides: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> ImageConfig:
    """Defaults, then environment variables (``DEDICATED_*_IMAGE``), then explicit overrides
    (keys: serving, quantize, operator, pull_policy/pullPolicy, runtime_class_name/runtimeClassName)."""
    env = os.environ if env is None else env
    values: dict[str, str] = {f: env[var] for f, var in _ENV.items() if env.get(var)}
    camel = {"pullPolicy": "pull_policy", "runtimeClassName": "runtime_class_name"}
    known = {f.name for f in fields(ImageConfig)}
    for key, value in (overrides or {}).items():
        key = camel.get(key, key)
        if key not in known:
            raise ValueError(f"unknown image setting {key!r}; known: {', '.join(sorted(known))}")
        values[key] = value
    return ImageConfig(**values)
