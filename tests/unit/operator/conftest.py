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
