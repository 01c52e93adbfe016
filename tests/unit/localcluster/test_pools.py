"""The GPU pool file: the shipped file is valid and complete, bad files get precise errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dedicated.localcluster.pools import DEFAULT_POOLS_FILE, PoolFileError, load_pools, parse_pools


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load(DEFAULT_POOLS_FILE.read_text())


def _error(data: dict) -> str:
    with pytest.raises(PoolFileError) as info:
        parse_pools(data, "pools.yaml")
    return str(info.value)


def test_shipped_file_declares_the_required_pools() -> None:
    pools = {pool.name: pool for pool in load_pools().pools}
    by_product = {pool.gpu_product: pool for pool in pools.values()}
    assert {"NVIDIA-A100-SXM4-80GB", "NVIDIA-A10", "NVIDIA-H100-80GB-HBM3", "NVIDIA-H200", "NVIDIA-GB10"} <= set(by_product)
    gb10 = by_product["NVIDIA-GB10"]
    assert (gb10.gpu_family, gb10.compute_major, gb10.compute_minor) == ("blackwell", 12, 1)
    assert gb10.unified_memory and gb10.gpus_per_node == 1 and gb10.node.arch == "arm64"
    assert by_product["NVIDIA-H200"].gpu_memory_mib > 140_000
    assert {p.gpu_family for p in pools.values()} >= {"ampere", "hopper", "blackwell"}
    assert all(pool.nodes >= 2 for pool in pools.values()), "several nodes per pool"
    for pool in pools.values():
        assert pool.node_selector == {"dedicated.dev/pool": pool.name}
        assert [t.effect for t in pool.tolerations] == ["NoSchedule"]


def test_unquoted_compute_capability_is_refused_with_a_hint(raw: dict) -> None:
    raw["pools"][4]["computeCapability"] = 12.1
    message = _error(raw)
    assert "pools[4] (blackwell-gb10).computeCapability" in message
    assert 'quoted string such as "9.0"' in message


def test_misspelled_field_and_missing_field_are_named(raw: dict) -> None:
    raw["pools"][0]["gpusPerNod"] = raw["pools"][0].pop("gpusPerNode")
    message = _error(raw)
    assert "pools[0] (ampere-a100).gpusPerNod: unknown field" in message
    assert "pools[0] (ampere-a100).gpusPerNode: required field is missing" in message


def test_family_and_capability_must_agree(raw: dict) -> None:
    raw["pools"][2]["computeCapability"] = "8.0"
    assert "does not belong to the hopper family (expected major 9)" in _error(raw)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("gpusPerNode", "8", "Input should be a valid integer"),
        ("gpusPerNode", 0, "greater than 0"),
        ("name", "Hopper_H100", "must be a DNS label"),
        ("gpuProduct", "NVIDIA H100", "not a valid Kubernetes label value"),
        ("nodeSelector", {}, "nodeSelector must name at least one label"),
        ("nodeSelector", {"bad key!": "x"}, "is not a valid label name"),
        ("costPerGpuHour", -1, "greater than or equal to 0"),
        ("unifiedMemory", "yes", "valid boolean"),
        ("tolerations", [{"key": "a", "operator": "Exists", "value": "b"}], "operator Exists must not have a value"),
        ("node", {"cpu": "lots"}, "is not a Kubernetes quantity"),
    ],
)
def test_bad_values_are_rejected(raw: dict, field: str, value: object, expected: str) -> None:
    raw["pools"][1][field] = value
    message = _error(raw)
    assert f"pools[1] ({raw['pools'][1]['name']})" in message and expected in message


def test_duplicate_names_and_selectors(raw: dict) -> None:
    dup = copy.deepcopy(raw)
    dup["pools"].append(copy.deepcopy(dup["pools"][0]))
    assert "pool name 'ampere-a100' is used twice (pools[0] and pools[5])" in _error(dup)
    same = copy.deepcopy(raw)
    same["pools"][1]["nodeSelector"] = same["pools"][0]["nodeSelector"]
    assert "have the same nodeSelector" in _error(same)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(PoolFileError, match="cannot read GPU pool file"):
        load_pools(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: [unclosed\n")
    with pytest.raises(PoolFileError, match="not valid YAML"):
        load_pools(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(PoolFileError, match="expected a mapping with a 'pools:' list"):
        load_pools(bad)
    bad.write_text("pools: []\n")
    with pytest.raises(PoolFileError, match="declares no pool"):
        load_pools(bad)


def test_too_many_simulated_nodes(raw: dict) -> None:
    raw["pools"][0]["nodes"] = 300
    assert "at most 254" in _error(raw)


def test_system_nodes_and_reserved_name(raw: dict) -> None:
    pools = parse_pools(raw)
    assert pools.system_nodes.nodes == 2 and pools.system_nodes.node.arch == "amd64"
    raw["pools"][0]["name"] = "system"
    assert "reserved for the systemNodes" in _error(raw)
