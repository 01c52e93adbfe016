"""Pydantic JSON Schema -> Kubernetes *structural* OpenAPI v3 schema.

Pydantic emits JSON Schema 2020-12 (``$ref``/``$defs``, ``anyOf`` with ``null`` for optionals,
numeric ``exclusiveMinimum``, ``title``, ``additionalProperties: false``); the API server wants an
OpenAPI v3.0 *structural* schema: every node typed, no references, no ``anyOf`` that carries types,
boolean ``exclusiveMinimum``. This module does only that translation and then checks the result,
so a model that cannot be expressed structurally fails generation instead of the ``kubectl apply``.

Optional fields become plain optional properties (not ``nullable``): the operator leaves them out
when unset, and a JSON merge patch's ``null`` deletes them, which is what Kubernetes clients expect.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

#: Keys the API server accepts in a CRD schema node (apiextensions JSONSchemaProps), minus the
#: ones a structural schema forbids or that we never need (``$ref``, ``definitions``, ``id``...).
ALLOWED_KEYS = frozenset({
    "type", "format", "description", "default", "enum", "nullable",
    "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "multipleOf",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
    "maxProperties", "minProperties", "required", "items", "properties", "additionalProperties",
    "example",
    "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
})
TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean"})


class SchemaError(ValueError):
    """The model cannot be expressed as a structural schema; names the path."""


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``model`` as the CRD embeds it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    out = _convert(raw, defs, path=model.__name__)
    check_structural(out, model.__name__)
    return out


def _resolve(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    """Inline ``$ref`` and single-element ``allOf``; sibling keys (description...) win."""
    node = dict(node)
    while True:
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            if name not in defs:
                raise SchemaError(f"{path}: unknown $ref {name}")
            node = {**copy.deepcopy(defs[name]), **node}
            continue
        if "allOf" in node:
            parts = node.pop("allOf")
            if len(parts) != 1:
                raise SchemaError(f"{path}: allOf with {len(parts)} members is not structural")
            node = {**parts[0], **node}
            continue
        return node


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = _resolve(node, defs, path)
    if "anyOf" in node:
        members = [m for m in node.pop("anyOf") if m.get("type") != "null"]
        if len(members) != 1:
            raise SchemaError(f"{path}: a union of {len(members)} types is not structural; "
                              "use one type plus a CEL rule")
        if node.get("default", ...) is None:
            node.pop("default")
        node = {**_resolve(members[0], defs, path), **node}
    node.pop("title", None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    if "enum" in node and "type" not in node:
        kinds = {type(v) for v in node["enum"]}
        node["type"] = {str: "string", int: "integer", bool: "boolean", float: "number"}[kinds.pop()]
    if node.get("type") == "object":
        # Unknown fields are pruned by the API server; additionalProperties:false is not structural.
        if node.get("additionalProperties") is False:
            node.pop("additionalProperties")
        props = node.get("properties")
        if props is not None:
            node["properties"] = {k: _convert(v, defs, f"{path}.{k}") for k, v in props.items()}
        if isinstance(node.get("additionalProperties"), dict):
            node["additionalProperties"] = _convert(node["additionalProperties"], defs, f"{path}.*")
    if node.get("type") == "array" and "items" in node:
        node["items"] = _convert(node["items"], defs, f"{path}[]")
    return _ordered(node)


_ORDER = ("description", "type", "format", "enum", "default")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """Stable key order so the YAML diff of a model change is readable."""
    head = {k: node[k] for k in _ORDER if k in node}
    tail = {k: node[k] for k in sorted(node) if k not in head}
    return {**head, **tail}


def check_structural(node: Any, path: str) -> None:
    """Raise ``SchemaError`` unless ``node`` obeys the structural-schema rules we rely on."""
    if not isinstance(node, dict):
        raise SchemaError(f"{path}: schema node is not an object")
    unknown = set(node) - ALLOWED_KEYS
    if unknown:
        raise SchemaError(f"{path}: keys not allowed in a CRD schema: {sorted(unknown)}")
    typ = node.get("type")
    free = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    if typ is None and not free:
        raise SchemaError(f"{path}: every node needs a type")
    if typ is not None and typ not in TYPES:
        raise SchemaError(f"{path}: type {typ!r} is not an OpenAPI type")
    if "properties" in node and "additionalProperties" in node:
        raise SchemaError(f"{path}: properties and additionalProperties are mutually exclusive")
    if typ == "array" and "items" not in node:
        raise SchemaError(f"{path}: arrays need items")
    if "default" in node and node["default"] is None:
        raise SchemaError(f"{path}: null default")
    for key, value in node.get("properties", {}).items():
        check_structural(value, f"{path}.{key}")
    if "items" in node:
        check_structural(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        check_structural(node["additionalProperties"], f"{path}.*")
    for req in node.get("required", []):
        if req not in node.get("properties", {}):
            raise SchemaError(f"{path}: required field {req!r} has no schema")
