"""The node-pool configuration loads the documented fields and rejects bad ones by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from dedicated.operator.pools import PoolConfigError, load_pools, load_pools_text

ROOT = Path(__file__).resolve().parents[3]

GOOD = """
pools:
  - name: hopper-h100
    gpuFamily: hopper
    gpuProduct: NVIDIA-H100-80GB-HBM3
    gpuMemoryMiB: 81559
    gpusPerNode: 8
    computeCapability: "9.0"
    unifiedMemory: false
    costPerGpuHour: 2.5
    nodeSelector: {dedicated.dev/pool: hopper-h100}
    tolerations: [{key: dedicated.dev/pool, operator: Equal, value: hopper-h100, effect: NoSchedule}]
    nodes: 3
"""


def test_loads_fields_and_ignores_local_cluster_extras(pools) -> None:
    cfg = load_pools_text(GOOD)
    pool = cfg.pools[0]
    assert (pool.name, pool.gpu_family, pool.gpu_memory_mib, pool.gpus_per_node) == ("hopper-h100", "hopper", 81559, 8)
    assert pool.capability == (9, 0) and not pool.unified_memory and pool.cost_per_gpu_hour == 2.5
    assert pool.tolerations_k8s() == [{"key": "dedicated.dev/pool", "operator": "Equal",
                                       "value": "hopper-h100", "effect": "NoSchedule"}]
    gb10 = pools.get("blackwell-gb10")
    assert gb10.capability == (12, 1) and gb10.unified_memory
    assert cfg.get("nope") is None


@pytest.mark.parametrize(("edit", "message"), [
    (('"9.0"', "9.0"), "computeCapability: must be a quoted string"),  # YAML float
    (('"9.0"', '"9"'), "must look like"),
    (("hopper-h100\n    gpuFamily", "Hopper_H100\n    gpuFamily"), "name: 'Hopper_H100' must be a DNS label"),
    (("gpuMemoryMiB: 81559", "gpuMemoryMib: 81559"), "gpuMemoryMib: Extra inputs are not permitted"),
    (("gpuFamily: hopper", "gpuFamily: ampere"), "computeCapability 9.0 is not a ampere GPU"),
    (("costPerGpuHour: 2.5", "costPerGpuHour: cheap"), "costPerGpuHour must be a number"),
    (("operator: Equal", "operator: Exists"), "operator Exists takes no value"),
    (("nodeSelector: {dedicated.dev/pool: hopper-h100}", "nodeSelector: {}"), "must name at least one label"),
    (("gpusPerNode: 8", "gpusPerNode: 0"), "gpusPerNode: Input should be greater than or equal to 1"),
])
def test_errors_name_pool_and_field(edit, message) -> None:
    old, new = edit
    assert old in GOOD
    with pytest.raises(PoolConfigError) as err:
        load_pools_text(GOOD.replace(old, new, 1), "pools.yaml")
    text = str(err.value)
    assert text.startswith("pools.yaml: pools[0]"), text
    assert message in text, text


def test_duplicates_and_shapes() -> None:
    twice = GOOD + GOOD.split("pools:\n", 1)[1]
    with pytest.raises(PoolConfigError, match="used twice"):
        load_pools_text(twice)
    with pytest.raises(PoolConfigError, match="no pool declared"):
        load_pools_text("pools: []")
    with pytest.raises(PoolConfigError, match="not valid YAML"):
        load_pools_text("pools: [")
    with pytest.raises(PoolConfigError, match="expected a mapping"):
        load_pools_text("42")
    with pytest.raises(PoolConfigError, match="cannot read"):
        load_pools("/nonexistent/pools.yaml")


def test_reads_the_local_cluster_pools_file_when_present() -> None:
    """Same file for the simulated cluster and the operator (other keys are the cluster's)."""
    path = ROOT / "dedicated" / "localcluster" / "gpu-pools.yaml"
    if not path.exists():
        pytest.skip("the local cluster's pools file is not in this checkout")
    cfg = load_pools(path)
    assert {p.gpu_family for p in cfg.pools} >= {"ampere", "hopper", "blackwell"}
