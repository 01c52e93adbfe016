"""Shared fixtures for the operator unit tests.

``cel``: evaluate a CRD schema's CEL rules against an object, the way the API server would:
apply schema defaults first (the API server defaults before it validates), then evaluate every ``x-kubernetes-validations`` rule of every node that is present,
with cel-python as the CEL runtime. Kubernetes-only CEL libraries (quantity, url, ...) are not
available here, which is fine: the project's rules use only standard CEL.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import importlib.util
import sys
from pathlib import Path

import celpy
import pytest


@cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    obj = copy.deepcopy(obj)
    if isinstance(obj, dict) and schema.get("type") == "object":
        for key, child in schema.get("properties", {}).items():
            if key not in obj and "default" in child:
                obj[key] = copy.deepcopy(child["default"])
            if key in obj:
                obj[key] = apply_defaults(child, obj[key])
    elif isinstance(obj, list) and schema.get("type") == "array":
        obj = [apply_defaults(schema["items"], item) for item in obj]
    return obj


def cel_errors(schema: dict[str, Any], obj: Any, path: str = "spec") -> list[str]:
    """``path: message`` for every CEL rule that the (defaulted) object violates."""
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        result = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(obj)})
        if not isinstance(result, celpy.celtypes.BoolType):
            raise AssertionError(f"rule {rule['rule']!r} did not evaluate to a bool: {result!r}")
        if not bool(result):
            errors.append(f"{path}{rule.get('fieldPath', '')}: {rule['message']}")
    if isinstance(obj, dict):
        for key, child in schema.get("properties", {}).items():
            if key in obj:
                errors += cel_errors(child, obj[key], f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            errors += cel_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def every_rule(schema: dict[str, Any]) -> list[dict[str, str]]:
    rules = list(schema.get("x-kubernetes-validations", []))
    for child in schema.get("properties", {}).values():
        rules += every_rule(child)
    if "items" in schema:
        rules += every_rule(schema["items"])
    return rules


class CelHelpers:
    apply_defaults = staticmethod(apply_defaults)
    errors = staticmethod(cel_errors)
    every_rule = staticmethod(every_rule)


@pytest.fixture
def cel() -> type[CelHelpers]:
    return CelHelpers


def _load_modelzoo():
    """The fixture writer lives next to the tests; importlib mode does not put this folder on
    sys.path, so load it by path once."""
    if "operator_modelzoo" not in sys.modules:
        spec = importlib.util.spec_from_file_location("operator_modelzoo", Path(__file__).with_name("modelzoo.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["operator_modelzoo"] = module
        spec.loader.exec_module(module)
    return sys.modules["operator_modelzoo"]


@pytest.fixture(scope="session")
def modelzoo():
    return _load_modelzoo()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, modelzoo) -> dict[str, Path]:
    """Every test checkpoint, written once per session (sparse files: a few MB on disk)."""
    root = tmp_path_factory.mktemp("checkpoints")
    out = {variant: modelzoo.qwen36(root / f"qwen36-{variant}", variant) for variant in ("humming", "autoround", "bf16")}
    out["qwen36-humming-nomtp"] = modelzoo.qwen36(root / "qwen36-humming-nomtp", "humming", mtp=False)
    out["llama8b"] = modelzoo.dense(root / "llama8b", modelzoo.LLAMA8B)
    out["qwen3-0.6b"] = modelzoo.dense(root / "qwen3-0.6b", modelzoo.QWEN3_06B)
    return out


@pytest.fixture(scope="session")
def profiles(checkpoints):
    from dedicated.operator.vram import profile_local

    return {name: profile_local(path) for name, path in checkpoints.items()}


POOLS_YAML = """
pools:
  - {name: ampere-a100, gpuFamily: ampere, gpuProduct: NVIDIA-A100-SXM4-80GB, gpuMemoryMiB: 81920, gpusPerNode: 8,
     computeCapability: "8.0", unifiedMemory: false, costPerGpuHour: 1.8,
     nodeSelector: {dedicated.dev/pool: ampere-a100},
     tolerations: [{key: dedicated.dev/pool, operator: Equal, value: ampere-a100, effect: NoSchedule}], nodes: 3}
  - {name: ampere-a10, gpuFamily: ampere, gpuProduct: NVIDIA-A10, gpuMemoryMiB: 23028, gpusPerNode: 4,
     computeCapability: "8.6", unifiedMemory: false, costPerGpuHour: 0.75,
     nodeSelector: {dedicated.dev/pool: ampere-a10},
     tolerations: [{key: dedicated.dev/pool, operator: Equal, value: ampere-a10, effect: NoSchedule}], nodes: 3}
  - {name: hopper-h100, gpuFamily: hopper, gpuProduct: NVIDIA-H100-80GB-HBM3, gpuMemoryMiB: 81559, gpusPerNode: 8,
     computeCapability: "9.0", unifiedMemory: false, costPerGpuHour: 2.5,
     nodeSelector: {dedicated.dev/pool: hopper-h100},
     tolerations: [{key: dedicated.dev/pool, operator: Equal, value: hopper-h100, effect: NoSchedule}], nodes: 3}
  - {name: hopper-h200, gpuFamily: hopper, gpuProduct: NVIDIA-H200, gpuMemoryMiB: 143771, gpusPerNode: 8,
     computeCapability: "9.0", unifiedMemory: false, costPerGpuHour: 3.5,
     nodeSelector: {dedicated.dev/pool: hopper-h200},
     tolerations: [{key: dedicated.dev/pool, operator: Equal, value: hopper-h200, effect: NoSchedule}], nodes: 3}
  - {name: blackwell-gb10, gpuFamily: blackwell, gpuProduct: NVIDIA-GB10, gpuMemoryMiB: 131072, gpusPerNode: 1,
     computeCapability: "12.1", unifiedMemory: true, costPerGpuHour: 0.6,
     nodeSelector: {dedicated.dev/pool: blackwell-gb10},
     tolerations: [{key: dedicated.dev/pool, operator: Equal, value: blackwell-gb10, effect: NoSchedule}], nodes: 4}
  - {name: turing-t4, gpuFamily: turing, gpuProduct: Tesla-T4, gpuMemoryMiB: 15360, gpusPerNode: 4,
     computeCapability: "7.5", costPerGpuHour: 0.35, nodeSelector: {dedicated.dev/pool: turing-t4}}
"""


@pytest.fixture(scope="session")
def pools():
    """The local cluster's five pools (same fields and values) plus a Turing pool for the
    compute-capability cases."""
    from dedicated.operator.pools import load_pools_text

    return load_pools_text(POOLS_YAML, "test pools")
