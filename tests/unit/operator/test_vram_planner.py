"""The planner on each architecture and each failure reason (pools: the local cluster's five plus
a Turing pool; see conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dedicated.operator.api import DedicatedEndpointSpec
from dedicated.operator.api.common import FeatureMode
from dedicated.operator.api.endpoint import EndpointReason
from dedicated.operator.pools import load_pools_text
from dedicated.operator.vram import Plan, PlanFailure, PlanRequest, plan, plan_endpoint, profile_hub, profile_local
from dedicated.operator.vram.memory import GIB
from dedicated.operator.vram.planner import _fit

AUTO, ON, OFF = FeatureMode.AUTO, FeatureMode.ON, FeatureMode.OFF
DISCRETE = ("ampere-a100", "ampere-a10", "hopper-h100", "hopper-h200")


def _ok(result) -> Plan:
    assert isinstance(result, Plan), getattr(result, "message", result)
    return result


def _fail(result, reason: EndpointReason) -> str:
    assert isinstance(result, PlanFailure), f"expected {reason}, got a plan on {result.pool.name}"
    assert result.reason == reason, result
    return result.message


def test_cheapest_pool_that_fits_wins(profiles, pools) -> None:
    p = _ok(plan(profiles["humming"], PlanRequest(), pools))
    assert p.pool.name == "blackwell-gb10"  # 0.60 per GPU-hour: the cheapest, and 128 GB fits it all
    assert p.gpu_memory_utilization == 0.81  # (128 - 24 GiB host reserve) / 128, rounded down
    assert "unified memory" in p.explanation
    # Among discrete pools, the 2-bit checkpoint fits one 24 GB A10 (0.75/h) with vision and MTP.
    p = _ok(plan(profiles["humming"], PlanRequest(gpu_families=("ampere", "hopper")), pools))
    assert (p.pool.name, p.tensor_parallel_size) == ("ampere-a10", 1)
    assert p.vision_loaded and p.mtp and p.max_model_len >= 4096
    assert p.fit.need <= p.fit.usable
    # BF16 (~67 GiB) cannot go on one A10: four of them (3.00/h) beat one A100 (1.80/h)? No: A100 wins.
    p = _ok(plan(profiles["bf16"], PlanRequest(gpu_families=("ampere",)), pools))
    assert (p.pool.name, p.tensor_parallel_size) == ("ampere-a100", 1)
    assert "Cheaper options do not fit: ampere-a10 x 1" in p.explanation


def test_plan_args_are_a_list_of_plain_strings(profiles, pools) -> None:
    p = _ok(plan(profiles["autoround"], PlanRequest(pool="hopper-h100", context_length=32768, concurrency=16), pools))
    args = p.vllm_args()
    assert all(isinstance(a, str) for a in args)
    assert args[args.index("--quantization") + 1] == "auto-round"
    assert args[args.index("--max-model-len") + 1] == "32768" and args[args.index("--max-num-seqs") + 1] == "16"
    assert args[args.index("--tensor-parallel-size") + 1] == str(p.tensor_parallel_size)
    assert json.loads(args[args.index("--speculative-config") + 1]) == {"method": "mtp", "num_speculative_tokens": 1}
    assert "--language-model-only" not in args  # vision fits on an H100
    status = p.to_status().to_k8s()
    assert status["pool"] == "hopper-h100" and status["maxModelLen"] == 32768 and status["mtp"] is True
    assert status["weightsGiB"] == pytest.approx(profiles["autoround"].parts.total / GIB, abs=0.01)
    humming = _ok(plan(profiles["humming"], PlanRequest(pool="hopper-h100"), pools)).vllm_args()
    assert humming[humming.index("--quantization") + 1] == "humming"
    llama = _ok(plan(profiles["llama8b"], PlanRequest(pool="hopper-h100"), pools)).vllm_args()
    assert "--quantization" not in llama  # BF16: nothing to say


def test_text_only_and_mtp_modes(profiles, pools) -> None:
    req = PlanRequest(pool="hopper-h100", text_only=ON, mtp=OFF, context_length=8192)
    p = _ok(plan(profiles["humming"], req, pools))
    assert p.text_only and not p.vision_loaded and not p.mtp
    assert "--language-model-only" in p.vllm_args() and "--speculative-config" not in p.vllm_args()
    # text-only without MTP loads text + embeddings only
    assert p.weights_bytes == profiles["humming"].parts.bytes("text") + profiles["humming"].parts.bytes("embeddings")
    p = _ok(plan(profiles["humming"], PlanRequest(pool="hopper-h100", mtp=ON, num_speculative_tokens=3), pools))
    assert p.mtp and p.num_speculative_tokens == 3
    # a dense text model: text-only by nature, no flag, MTP unavailable so auto turns it off
    p = _ok(plan(profiles["llama8b"], PlanRequest(pool="hopper-h100"), pools))
    assert p.text_only and not p.mtp and "--language-model-only" not in p.vllm_args()
    assert "no vision encoder" in p.explanation and "no MTP weights" in p.explanation


def _pool_with_usable(gib: float) -> str:
    mib = int(gib / 0.9 * 1024)
    return f"""
pools:
  - {{name: custom, gpuFamily: hopper, gpuProduct: Custom, gpuMemoryMiB: {mib}, gpusPerNode: 1,
     computeCapability: "9.0", costPerGpuHour: 1, nodeSelector: {{pool: custom}}}}
"""


def test_auto_drops_vision_then_mtp_when_they_do_not_fit(profiles, pools) -> None:
    prof = profiles["humming"]
    h100 = pools.get("hopper-h100")

    def need(vision: bool, mtp: bool) -> float:
        return _fit(prof, h100, 1, 4096, 8, vision=vision, mtp=mtp, spec_tokens=1, utilization=0.9).need / GIB

    both, vision_only, mtp_only, neither = need(True, True), need(True, False), need(False, True), need(False, False)
    assert neither < min(vision_only, mtp_only) and max(vision_only, mtp_only) < both
    # room for one feature, not both: auto keeps vision (a capability) and drops MTP (only speed)
    mid = load_pools_text(_pool_with_usable((max(vision_only, mtp_only) + both) / 2))
    p = _ok(plan(prof, PlanRequest(context_length=4096), mid))
    assert p.vision_loaded and not p.mtp and "--speculative-config" not in p.vllm_args()
    assert "MTP off: it did not fit" in p.explanation
    # text-only on that pool frees room for MTP
    p = _ok(plan(prof, PlanRequest(context_length=4096, text_only=ON), mid))
    assert not p.vision_loaded and p.mtp and "--language-model-only" in p.vllm_args()
    # both required there: a memory failure that names the shortfall
    msg = _fail(plan(prof, PlanRequest(context_length=4096, text_only=OFF, mtp=ON), mid),
                EndpointReason.INSUFFICIENT_GPU_MEMORY)
    assert "(vision, MTP)" in msg and "short by" in msg and "pool custom with 1 GPU(s)" in msg
    # barely above text-only without MTP: both auto features off
    low = load_pools_text(_pool_with_usable(neither + 0.05))
    p = _ok(plan(prof, PlanRequest(context_length=4096), low))
    assert not p.vision_loaded and not p.mtp
    assert "Text-only: the vision encoder did not fit" in p.explanation


def test_auto_context_is_the_largest_standard_length_that_fits(profiles, pools) -> None:
    p = _ok(plan(profiles["qwen3-0.6b"], PlanRequest(pool="ampere-a10"), pools))
    assert p.max_model_len == 16384  # 8 x 32768 x 112 KiB = 28 GiB of KV would not fit in 20 GiB
    bigger = _fit(profiles["qwen3-0.6b"], pools.get("ampere-a10"), 1, 32768, 8, vision=False, mtp=False,
                  spec_tokens=1, utilization=None)
    assert not bigger.fits
    p = _ok(plan(profiles["qwen3-0.6b"], PlanRequest(pool="hopper-h100"), pools))
    assert p.max_model_len == 40960  # the model's own maximum
    p = _ok(plan(profiles["qwen3-0.6b"], PlanRequest(pool="ampere-a10", concurrency=1), pools))
    assert p.max_model_len == 40960 and p.max_num_seqs == 1


def test_tensor_parallel_constraints_are_derived_from_the_config(profiles, pools) -> None:
    # 2-bit experts: 512 / 8 = 64 columns per shard < group 128
    msg = _fail(plan(profiles["humming"], PlanRequest(gpus_per_replica=8), pools),
                EndpointReason.INCOMPATIBLE_TENSOR_PARALLEL)
    assert "expert intermediate size 512 / TP 8 = 64 is not a multiple of the quantization group size 128" in msg
    # the same shapes in BF16 have no group: TP 8 is fine
    assert _ok(plan(profiles["bf16"], PlanRequest(gpus_per_replica=8, pool="hopper-h100"), pools)).tensor_parallel_size == 8
    msg = _fail(plan(profiles["llama8b"], PlanRequest(gpus_per_replica=3), pools),
                EndpointReason.INCOMPATIBLE_TENSOR_PARALLEL)
    assert "32 attention heads are not divisible by 3" in msg
    # the planner never picks a TP the shapes forbid, even when memory would push it there
    p = _ok(plan(profiles["humming"], PlanRequest(pool="ampere-a10", context_length=65536), pools))
    assert p.tensor_parallel_size == 2  # one A10 is too small for 8 x 65536 tokens; two suffice


@pytest.mark.parametrize(("request_", "reason", "text"), [
    (PlanRequest(pool="h100"), EndpointReason.POOL_NOT_FOUND, "spec.placement.pool 'h100' is not a configured pool"),
    (PlanRequest(gpu_families=("volta",)), EndpointReason.NO_POOL_MATCHES, "gpuFamilies (volta)"),
    (PlanRequest(gpus_per_replica=16), EndpointReason.NO_POOL_MATCHES, "gpusPerReplica 16"),
    (PlanRequest(pool="turing-t4"), EndpointReason.UNSUPPORTED_COMPUTE_CAPABILITY,
     "needs compute capability >= 8.0 (the Humming MoE kernels need Ampere or newer"),
    (PlanRequest(context_length=300000), EndpointReason.CONTEXT_TOO_LONG, "exceeds the model's max_position_embeddings 262144"),
    (PlanRequest(pool="ampere-a10", max_gpus_per_replica=1, context_length=262144, concurrency=64),
     EndpointReason.INSUFFICIENT_GPU_MEMORY, "at max-model-len 262144 x 64 sequences"),
])
def test_failure_reasons_for_the_humming_checkpoint(profiles, pools, request_, reason, text) -> None:
    msg = _fail(plan(profiles["humming"], request_, pools), reason)
    assert text in msg, msg


def test_insufficient_memory_names_the_shortfall_in_gib(profiles, pools) -> None:
    msg = _fail(plan(profiles["bf16"], PlanRequest(pool="ampere-a10", max_gpus_per_replica=2), pools),
                EndpointReason.INSUFFICIENT_GPU_MEMORY)
    # e.g. "needs 35.3 GiB per GPU (weights 32.3 + KV cache/state 0.4 + runtime 2.6) ... offers 20.2 GiB ..."
    assert "GiB per GPU (weights" in msg and "offers 20.2 GiB usable per GPU" in msg and "short by" in msg


def test_capability_differs_by_format(profiles, pools) -> None:
    # AutoRound/BF16 run on Turing (sm 7.5); Humming does not
    p = _ok(plan(profiles["qwen3-0.6b"], PlanRequest(pool="turing-t4"), pools))
    assert p.pool.name == "turing-t4"
    assert _ok(plan(profiles["autoround"], PlanRequest(pool="turing-t4", context_length=4096, text_only=ON, mtp=OFF),
                    pools)).tensor_parallel_size >= 2


def test_feature_unavailable(profiles, pools) -> None:
    msg = _fail(plan(profiles["llama8b"], PlanRequest(mtp=ON), pools), EndpointReason.FEATURE_UNAVAILABLE)
    assert "spec.serving.mtp.mode is on but the checkpoint has no MTP weights" in msg
    msg = _fail(plan(profiles["qwen36-humming-nomtp"], PlanRequest(mtp=ON), pools), EndpointReason.FEATURE_UNAVAILABLE)
    assert "its weights were dropped" in msg
    p = _ok(plan(profiles["qwen36-humming-nomtp"], PlanRequest(), pools))
    assert not p.mtp


def test_explicit_utilization_and_spec_adapter(profiles, pools) -> None:
    spec = DedicatedEndpointSpec.model_validate({
        "model": {"hub": {"repo": "Qwen/Qwen3-8B"}},
        "placement": {"gpuFamilies": ["hopper"], "maxGpusPerReplica": 2},
        "serving": {"contextLength": 16384, "concurrency": 4, "gpuMemoryUtilization": 0.8,
                    "textOnly": "on", "mtp": {"mode": "off"}},
    })
    p = _ok(plan_endpoint(spec, profiles["humming"], pools))
    assert p.pool.gpu_family == "hopper" and p.gpu_memory_utilization == 0.8
    assert p.max_model_len == 16384 and p.max_num_seqs == 4 and p.text_only and not p.mtp
    assert "--gpu-memory-utilization" in p.vllm_args() and "0.80" in p.vllm_args()


def test_plans_are_deterministic(profiles, pools) -> None:
    a = plan(profiles["autoround"], PlanRequest(), pools)
    b = plan(profiles["autoround"], PlanRequest(), pools)
    assert a.vllm_args() == b.vllm_args() and a.explanation == b.explanation


class FakeHub:
    """Stands in for huggingface_hub.HfApi: the Hub is unreachable from this machine (and from CI),
    so the Hub path is tested with this fake serving a local fixture's config and headers through
    the real huggingface_hub metadata types."""

    def __init__(self, checkpoint: Path, error: Exception | None = None) -> None:
        self.checkpoint, self.error, self.calls = checkpoint, error, []

    def hf_hub_download(self, repo_id: str, filename: str, *, revision: str | None = None) -> str:
        self.calls.append(("download", repo_id, filename, revision))
        if self.error:
            raise self.error
        return str(self.checkpoint / filename)

    def get_safetensors_metadata(self, repo_id: str, *, revision: str | None = None):
        from huggingface_hub.utils import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

        self.calls.append(("metadata", repo_id, revision))
        files = {}
        for path in sorted(self.checkpoint.glob("*.safetensors")):
            with path.open("rb") as fh:  # header only: the data region is a large sparse hole
                raw = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
            raw.pop("__metadata__", None)
            files[path.name] = SafetensorsFileMetadata(metadata={}, tensors={
                name: TensorInfo(dtype=e["dtype"], shape=e["shape"], data_offsets=tuple(e["data_offsets"]))
                for name, e in raw.items()})
        return SafetensorsRepoMetadata(metadata=None, sharded=True, weight_map={}, files_metadata=files)


def test_hub_path_with_a_faked_hub_client(checkpoints, profiles, pools) -> None:
    hub = FakeHub(checkpoints["qwen3-0.6b"])
    prof = profile_hub("Qwen/Qwen3-0.6B", "main", client=hub)
    assert prof.parts.total == profiles["qwen3-0.6b"].parts.total
    assert prof.source == "hf://Qwen/Qwen3-0.6B@main"
    assert ("metadata", "Qwen/Qwen3-0.6B", "main") in hub.calls
    assert _ok(plan(prof, PlanRequest(), pools)).vllm_args() == _ok(plan(profiles["qwen3-0.6b"], PlanRequest(), pools)).vllm_args()


def test_hub_errors_become_reasons(checkpoints) -> None:
    import httpx
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from dedicated.operator.vram import CheckpointError

    response = httpx.Response(404, request=httpx.Request("GET", "https://hub.invalid/api/models/x/y"))
    for error, text in ((RepositoryNotFoundError("nope", response=response), "does not exist or is private"),
                        (GatedRepoError("gated", response=response), "is gated")):
        with pytest.raises(CheckpointError) as err:
            profile_hub("x/y", client=FakeHub(checkpoints["qwen3-0.6b"], error))
        assert err.value.reason == EndpointReason.MODEL_NOT_FOUND and text in err.value.message


def test_local_and_profile_equal(checkpoints, profiles) -> None:
    assert profile_local(checkpoints["llama8b"]).parts.total == profiles["llama8b"].parts.total
