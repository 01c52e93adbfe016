"""The generated CRDs are structural, complete, carry the CEL rules, columns and subresources the
issue asks for, and the committed files in crds/ and docs/api.md are not stale."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from dedicated.operator.api.crd import DEDICATED_ENDPOINT, GROUP, KINDS, QUANTIZED_MODEL, VERSION, build_crd
from dedicated.operator.api.schema import SchemaError, check_structural, structural_schema
from dedicated.operator import crdgen
from dedicated.operator.crdgen import generate, render_crds, stale_files

ROOT = Path(__file__).resolve().parents[3]


def _schema(kind) -> dict[str, Any]:
    return build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{key}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind) -> None:
    schema = _schema(kind)
    check_structural(schema, kind.kind)
    text = yaml.safe_dump(schema)
    for forbidden in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "title:", "const:", "nullable"):
        assert forbidden not in text, forbidden
    for path, node in _walk(schema):
        assert "type" in node, path
        if node.get("type") == "object" and path not in ("", ".metadata"):
            assert "properties" in node, f"{path}: an untyped map would need preserve-unknown-fields"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert not isinstance(node.get(bound), (int, float)) or isinstance(node.get(bound), bool), path


def test_structural_check_refuses_what_the_api_server_would() -> None:
    with pytest.raises(SchemaError, match="every node needs a type"):
        check_structural({"properties": {"x": {"description": "untyped"}}, "type": "object"}, "t")
    with pytest.raises(SchemaError, match="not allowed"):
        check_structural({"type": "object", "$ref": "#/x"}, "t")

    class Union(BaseModel):
        x: int | str

    with pytest.raises(SchemaError, match="union"):
        structural_schema(Union)


def _model_aliases(model: type[BaseModel], prefix: str):
    """Every (wire path) of the model, recursively, from pydantic's own field list."""
    for name, info in model.model_fields.items():
        alias = info.alias or name
        path = f"{prefix}.{alias}"
        yield path
        inner = info.annotation
        for _ in range(3):  # unwrap Optional / list
            args = [a for a in typing.get_args(inner) if a is not type(None)]
            if typing.get_origin(inner) in (typing.Union, list, __import__("types").UnionType) and args:
                if typing.get_origin(inner) is list:
                    path += "[]"
                inner = args[0]
                inner = typing.get_args(inner)[0] if typing.get_origin(inner) is typing.Annotated else inner
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            yield from _model_aliases(inner, path)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_model_field_is_in_the_schema(kind) -> None:
    paths = {p for p, _ in _walk(_schema(kind))}
    for part, model in (("spec", kind.spec), ("status", kind.status)):
        expected = list(_model_aliases(model, f".{part}"))
        assert expected, part
        missing = [p for p in expected if p not in paths]
        assert not missing, missing
    # and every leaf is documented
    undocumented = [p for p, n in _walk(_schema(kind)) if p.startswith((".spec", ".status")) and not n.get("description")]
    assert not undocumented, undocumented


def test_cel_rules_present_compile_and_name_their_field(cel) -> None:
    rules = cel.every_rule(_schema(DEDICATED_ENDPOINT)) + cel.every_rule(_schema(QUANTIZED_MODEL))
    messages = {r["message"] for r in rules}
    for expected in (
        "spec.model: set exactly one of quantizedModelRef, hub, volume",
        "spec.placement.gpusPerReplica must be <= spec.placement.maxGpusPerReplica",
        "spec.placement: set at most one of pool, gpuFamilies",
        "spec.base: set exactly one of hub, volume",
        "spec.output: set exactly one of volume, hub",
        "spec.bits: method gsq supports 2 bits",
        "spec.bits: method autoround supports 2, 3, 4, 8 bits",
    ):
        assert expected in messages
    import celpy

    for rule in rules:
        celpy.Environment().compile(rule["rule"])  # raises on a syntax error
        # the message names a field: either a spec path or the field the rule sits on
        assert rule["message"].startswith("spec.") or rule["message"].split()[0] in ("repo", "revision", "path")


def _resolve(schema: dict[str, Any], json_path: str) -> dict[str, Any] | None:
    node = schema
    for key in json_path.strip(".").split("."):
        node = node.get("properties", {}).get(key)
        if node is None:
            return None
    return node


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_printer_columns_point_at_real_fields(kind) -> None:
    schema = _schema(kind)
    for col in build_crd(kind)["spec"]["versions"][0]["additionalPrinterColumns"]:
        if col["jsonPath"] == ".metadata.creationTimestamp":
            assert col["type"] == "date"
            continue
        node = _resolve(schema, col["jsonPath"])
        assert node is not None, col
        assert node["type"] == col["type"], col


def test_endpoint_columns_and_scale_subresource() -> None:
    crd = build_crd(DEDICATED_ENDPOINT)
    assert crd["metadata"]["name"] == f"dedicatedendpoints.{GROUP}"
    assert GROUP == "llm.dedicated.dev" and VERSION == "v1alpha1"
    names = crd["spec"]["names"]
    assert {"dep", "dedep"} <= set(names["shortNames"]) and names["categories"] == ["dedicated"]
    version = crd["spec"]["versions"][0]
    cols = {c["name"]: c for c in version["additionalPrinterColumns"]}
    for name in ("Model", "Pool", "GPU", "GPUs", "Ready", "Desired", "Phase", "Age"):
        assert cols[name].get("priority", 0) == 0, name
    for name in ("URL", "Text-Only", "MTP", "TP", "Max-Len"):
        assert cols[name]["priority"] == 1, name
    scale = version["subresources"]["scale"]
    schema = _schema(DEDICATED_ENDPOINT)
    assert _resolve(schema, scale["specReplicasPath"])["type"] == "integer"
    assert _resolve(schema, scale["statusReplicasPath"])["type"] == "integer"
    assert _resolve(schema, scale["labelSelectorPath"])["type"] == "string"
    assert version["subresources"]["status"] == {}
    conds = _resolve(schema, ".status.conditions")
    assert conds["x-kubernetes-list-type"] == "map" and conds["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conds["items"]["required"]) >= {"type", "status", "reason", "lastTransitionTime"}


def test_quantized_model_columns() -> None:
    version = build_crd(QUANTIZED_MODEL)["spec"]["versions"][0]
    cols = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert [n for n, c in cols.items() if not c.get("priority")] == ["Method", "Bits", "Phase", "Progress", "Age"]
    assert cols["Artifact"]["priority"] == 1
    assert "scale" not in version["subresources"]
    assert build_crd(QUANTIZED_MODEL)["spec"]["names"]["shortNames"] == ["qm"]


def test_committed_files_are_not_stale() -> None:
    stale = stale_files(ROOT)
    assert not stale, f"run `dedicated crds generate`: stale {[str(p.relative_to(ROOT)) for p in stale]}"


def cli_main(argv: list[str]) -> int:
    """`dedicated crds ...` through this module's own parser: building the full `dedicated` parser
    would import every area's commands (torch included) just to test this one."""
    import argparse

    parser = argparse.ArgumentParser(prog="dedicated")
    crdgen.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_crds_command_is_registered_in_the_cli() -> None:
    import ast

    tree = ast.parse((ROOT / "dedicated" / "cli.py").read_text())
    modules = next(node.value for node in ast.walk(tree) if isinstance(node, ast.AnnAssign)
                   and getattr(node.target, "id", "") == "COMMAND_MODULES")
    assert "dedicated.operator.crdgen" in ast.literal_eval(modules)


def test_generation_is_deterministic_and_check_detects_drift(tmp_path: Path, capsys) -> None:
    assert render_crds() == render_crds()
    assert cli_main(["crds", "generate", "--check", "--root", str(tmp_path)]) == 1  # nothing there yet
    assert cli_main(["crds", "generate", "--root", str(tmp_path)]) == 0
    assert cli_main(["crds", "generate", "--check", "--root", str(tmp_path)]) == 0
    assert generate(tmp_path) == []  # second run writes nothing
    crd = tmp_path / "crds" / f"dedicatedendpoints.{GROUP}.yaml"
    crd.write_text(crd.read_text().replace("dedep", "dd"))
    (tmp_path / "crds" / "old.yaml").write_text("kind: Leftover\n")
    assert sorted(p.name for p in stale_files(tmp_path)) == [crd.name, "old.yaml"]
    capsys.readouterr()
    assert cli_main(["crds", "generate", "--check", "--root", str(tmp_path)]) == 1
    assert "stale: crds/old.yaml" in capsys.readouterr().err
    loaded = list(yaml.safe_load_all((ROOT / "crds" / f"quantizedmodels.{GROUP}.yaml").read_text()))
    assert loaded[0]["kind"] == "CustomResourceDefinition"
