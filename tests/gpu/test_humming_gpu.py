"""GPU cross-check: the Humming library reads our checkpoints bit for bit and its GEMMs match.

Runs on the device machine (no vLLM there, no network):

    python -m pytest tests/gpu/test_humming_gpu.py

Everything is built here from scratch: a compressed-tensors pack-quantized checkpoint (2-bit
codes in a 4-bit container, as GSQ exports), repacked by our converter, then loaded, dequantized
and multiplied by `humming-kernels`. Dequantization and (un)packing must be bit-exact; GEMM outputs
are BF16, so they are compared to a float32 reference within |err| <= 1e-2 * |ref| + 1e-2 *
max|ref| (BF16 keeps 8 significant bits: one output rounding is 2**-9 relative).

The last tests reproduce vLLM 0.33.0's Humming MoE defect with the library: a TP rank whose
share of the expert intermediate dimension is smaller than a scale group gets a zero-column
scale tensor from vLLM's own loader (compiled from the pinned wheel's source, carried to the
device), and the Humming kernel then returns zeros for the routed experts' down projection.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "humming"))
import checkpoints as ck  # noqa: E402

from dedicated.quantize_job import bitpack  # noqa: E402
from dedicated.quantize_job.humming.format import HummingSpec  # noqa: E402
from dedicated.quantize_job.qtensor import QuantizedWeight  # noqa: E402

pytestmark = pytest.mark.gpu

HIDDEN, INTER, EXPERTS, GROUP = 512, 256, 8, 128
DENSE = "model.layers.2.mlp.down_proj"


def _report(name: str, **values: object) -> None:
    print(f"[humming-gpu] {name}: " + json.dumps(values, default=str), flush=True)


def _close(out: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    out, ref = out.float(), ref.float()
    err = (out - ref).abs()
    scale = ref.abs().max().item()
    bound = 1e-2 * ref.abs() + 1e-2 * scale
    _report(name, max_abs_err=err.max().item(), max_ref=scale,
            max_err_over_max_ref=err.max().item() / max(scale, 1e-30),
            bf16_exact_fraction=(out == ref.to(torch.bfloat16).float()).float().mean().item())
    assert bool((err <= bound).all()), f"{name}: {int((err > bound).sum())} elements out of bound"


def make_modules() -> dict[str, QuantizedWeight]:
    """Routed experts (up/down) and one dense projection; deterministic seeds."""
    mods = {}
    seed = 100
    for e in range(EXPERTS):
        for proj, (o, i) in {"up_proj": (INTER, HIDDEN), "down_proj": (HIDDEN, INTER)}.items():
            seed += 1
            mods[f"model.layers.0.mlp.experts.{e}.{proj}"] = ck.random_weight(o, i, 2, GROUP, seed)
    mods[DENSE] = ck.random_weight(256, HIDDEN, 2, GROUP, 7)
    return mods


@pytest.fixture(scope="module")
def modules() -> dict[str, QuantizedWeight]:
    return make_modules()


def build_checkpoint(modules: dict[str, QuantizedWeight], root: Path) -> Path:
    """compressed-tensors export (2-bit codes, 4-bit container) -> our repack -> Humming."""
    from dedicated.quantize_job.humming import repack_checkpoint

    ck.write_source(root / "src", modules=modules, other={}, container_bits=4, shard_bytes=60_000)
    report = repack_checkpoint(root / "src", root / "humming", bits=2)
    _report("repack", modules=report.quantized_modules, bits_per_weight=report.bits_per_weight)
    return root / "humming"


@pytest.fixture(scope="module")
def checkpoint(modules: dict[str, QuantizedWeight], tmp_path_factory: pytest.TempPathFactory
               ) -> Path:
    try:
        return build_checkpoint(modules, tmp_path_factory.mktemp("ckpt"))
    except ImportError as exc:  # compressed-tensors cannot import on this machine
        prebuilt = os.environ.get("DEDICATED_HUMMING_CKPT")
        if not prebuilt:
            raise
        _report("checkpoint", built_here=False, reason=str(exc), path=prebuilt)
        return Path(prebuilt)


def main() -> None:
    """`python tests/gpu/test_humming_gpu.py DIR`: build the checkpoint on a CPU machine."""
    root = Path(sys.argv[1])
    root.mkdir(parents=True)
    print(build_checkpoint(make_modules(), root))


@pytest.fixture(scope="module")
def tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    return ck.load_all(checkpoint)


def test_environment() -> None:
    import humming

    _report("env", torch=torch.__version__, humming=humming.__version__,
            device=torch.cuda.get_device_name(), capability=torch.cuda.get_device_capability())


def test_library_pack_and_unpack_match_ours(tensors: dict[str, torch.Tensor],
                                            modules: dict[str, QuantizedWeight]) -> None:
    from humming import ops

    for name in (DENSE, "model.layers.0.mlp.experts.3.down_proj"):
        packed = tensors[f"{name}.weight"].cuda()
        unsigned = ops.unpack_weight(packed, 2)
        expected = modules[name].codes.to(torch.int32) + 2
        assert torch.equal(unsigned.cpu(), expected)
        assert torch.equal(ops.pack_weight(expected.cuda().contiguous(), 2).cpu(),
                           bitpack.pack(expected, 2))


def test_library_dequantizes_every_value_exactly(tensors: dict[str, torch.Tensor],
                                                  modules: dict[str, QuantizedWeight]) -> None:
    from humming.schema import HummingWeightSchema

    schema = HummingWeightSchema(b_dtype="uint2", weight_scale_group_size=GROUP,
                                 weight_scale_type="group")
    for name in (DENSE, "model.layers.0.mlp.experts.5.up_proj"):
        got = schema.dequant_tensors({"weight": tensors[f"{name}.weight"].cuda(),
                                      "weight_scale": tensors[f"{name}.weight_scale"].cuda()})
        assert torch.equal(got.float().cpu(), modules[name].dequantize(torch.float32)), name


def test_library_loads_the_checkpoint_and_its_dense_gemm_matches(
        checkpoint: Path, modules: dict[str, QuantizedWeight]) -> None:
    from humming.layer import HummingLayer

    layer = HummingLayer.from_safetensors(str(checkpoint), prefix=DENSE,
                                          torch_dtype=torch.bfloat16)
    layer = layer.cuda()
    layer.transform()
    torch.manual_seed(0)
    for m in (1, 33, 256):
        x = (torch.randn(m, HIDDEN, device="cuda") / 4).to(torch.bfloat16)
        out = layer(x, tuning_config=_tuning(layer.humming_config, m, "dense"))
        ref = x.float() @ modules[DENSE].dequantize(torch.float32).cuda().T
        _close(out, ref, f"dense gemm m={m}")


def _tuning(config, rows: int, gemm_type: str) -> dict:  # noqa: ANN001
    """The library's heuristic kernel config for one problem size (one kernel to compile)."""
    from humming.tune import get_heuristics_config

    return get_heuristics_config(config, shape_m=rows, gemm_type=gemm_type)


def _indexed_moe(layer, x: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    from humming.testing.data import generate_moe_tensors

    tuning = _tuning(layer.humming_config, topk_ids.numel(), "indexed")
    block = tuning["block_shape"][0]
    _, _, sorted_ids, expert_ids, padded = generate_moe_tensors(
        topk_ids, layer.num_experts, "indexed", block_size_config=block)
    return layer(x, sorted_ids=sorted_ids, expert_ids=expert_ids, num_tokens_padded=padded,
                 top_k=topk_ids.shape[1], compute_config={"gemm_type": "indexed"},
                 tuning_config=tuning)


def test_library_moe_gemm_on_repacked_experts_matches(
        tensors: dict[str, torch.Tensor], modules: dict[str, QuantizedWeight]) -> None:
    from humming.layer import HummingLayer

    names = [f"model.layers.0.mlp.experts.{e}.up_proj" for e in range(EXPERTS)]
    weight = torch.stack([tensors[f"{n}.weight"] for n in names])
    scale = torch.stack([tensors[f"{n}.weight_scale"] for n in names])
    layer = HummingLayer(shape_n=INTER, shape_k=HIDDEN, num_experts=EXPERTS,
                         weight_config={"quant_method": "humming", "b_dtype": "uint2",
                                        "weight_scale_group_size": GROUP,
                                        "weight_scale_type": "group"},
                         torch_dtype=torch.bfloat16).cuda()
    layer.load_from_tensors({"weight": weight.cuda(), "weight_scale": scale.cuda()})
    layer.transform()
    torch.manual_seed(1)
    for m, top_k in ((5, 2), (64, 4)):
        x = (torch.randn(m, HIDDEN, device="cuda") / 4).to(torch.bfloat16)
        topk_ids = torch.randn(m, EXPERTS, device="cuda").topk(top_k, 1).indices.int()
        out = _indexed_moe(layer, x, topk_ids)
        ref = torch.empty(m * top_k, INTER, device="cuda")
        for row, expert in enumerate(topk_ids.reshape(-1).tolist()):
            w = modules[names[expert]].dequantize(torch.float32).cuda()
            ref[row] = x[row // top_k].float() @ w.T
        _close(out, ref, f"moe indexed gemm m={m} top_k={top_k}")


# --- vLLM 0.33.0 Humming MoE defect, reproduced with the library ------------------------------


def _vllm_rank_w2(modules: dict[str, QuantizedWeight], tensors: dict[str, torch.Tensor],
                  tp: int, rank: int):  # noqa: ANN202
    """Build one TP rank's w2 the way vLLM 0.33.0 does, and run it through the Humming kernel.

    Allocation: HummingWeightSchema.get_padded_tensors_attrs (what HummingMoEMethod.create_weights
    calls). Loading: vLLM's RoutedExperts._load_w2, compiled from the pinned source. Conversion:
    convert_humming + prepare_and_transform_humming_tensors with vLLM's 256/128 padding.
    Returns (kernel output, exact partial product).
    """
    import vllm_pin
    from humming.forward import humming_forward
    from humming.schema import HummingWeightSchema
    from humming.transform import prepare_and_transform_humming_tensors

    schema = HummingWeightSchema(b_dtype="uint2", weight_scale_group_size=GROUP,
                                 weight_scale_type="group")
    shard_k = INTER // tp
    attrs = schema.get_padded_tensors_attrs(shape_n=HIDDEN, shape_k=shard_k, num_experts=EXPERTS,
                                            param_dtype=torch.bfloat16)
    params = {k: torch.zeros(a["shape"], dtype=a["dtype"]) for k, a in attrs.items()}
    load = vllm_pin.fused_moe_w2_loader(tp, rank)
    names = [f"model.layers.0.mlp.experts.{e}.down_proj" for e in range(EXPERTS)]
    for e, name in enumerate(names):
        load(params["weight"][e], tensors[f"{name}.weight"])
        load(params["weight_scale"][e], tensors[f"{name}.weight_scale"])
    device = torch.device("cuda")
    params = {k: v.to(device) for k, v in params.items()}
    converted, params = schema.convert_humming(params, shape_n_stacks=[HIDDEN],
                                               shape_k_stacks=[shard_k],
                                               param_dtype=torch.bfloat16, num_experts=EXPERTS)
    config, kernel_tensors = prepare_and_transform_humming_tensors(
        params, shape_n=HIDDEN, shape_k=shard_k, weight_schema=converted,
        num_experts=EXPERTS, pad_n_to_multiple=256, pad_k_to_multiple=128,
        torch_dtype=torch.bfloat16, device=device)
    torch.manual_seed(2)
    m = 48
    x = (torch.randn(m, shard_k, device="cuda") / 4).to(torch.bfloat16)
    topk_ids = torch.randint(0, EXPERTS, (m, 1), device="cuda", dtype=torch.int32)
    from humming.testing.data import generate_moe_tensors

    tuning = _tuning(config, m, "indexed")
    _, _, sorted_ids, expert_ids, padded = generate_moe_tensors(
        topk_ids, EXPERTS, "indexed", block_size_config=tuning["block_shape"][0])
    locks = torch.zeros(2048, dtype=torch.int32, device="cuda")
    out = humming_forward(config, inputs=x, weight=kernel_tensors["weight"],
                          weight_scale=kernel_tensors.get("weight_scale"),
                          weight_scale_2=kernel_tensors.get("weight_scale_2"),
                          sorted_ids=sorted_ids, expert_ids=expert_ids, num_tokens_padded=padded,
                          top_k=1, compute_config={"gemm_type": "indexed"}, tuning_config=tuning,
                          locks=locks)
    ref = torch.empty(m, HIDDEN, device="cuda")
    cols = slice(rank * shard_k, (rank + 1) * shard_k)
    for row, expert in enumerate(topk_ids.reshape(-1).tolist()):
        w = modules[names[expert]].dequantize(torch.float32)[:, cols].cuda()
        ref[row] = x[row].float() @ w.T
    return out, ref


@pytest.mark.skipif(not os.environ.get("DEDICATED_VLLM_SOURCES"),
                    reason="needs the pinned vLLM sources (DEDICATED_VLLM_SOURCES)")
def test_vllm_w2_shard_aligned_to_groups_is_correct(
        modules: dict[str, QuantizedWeight], tensors: dict[str, torch.Tensor]) -> None:
    """Control: TP=2 gives each rank 128 = one whole group; vLLM's path is then right."""
    out, ref = _vllm_rank_w2(modules, tensors, tp=2, rank=1)
    _close(out, ref, "vllm w2 tp=2 rank=1")


@pytest.mark.skipif(not os.environ.get("DEDICATED_VLLM_SOURCES"),
                    reason="needs the pinned vLLM sources (DEDICATED_VLLM_SOURCES)")
def test_vllm_defect_w2_shard_smaller_than_a_group_outputs_zeros(
        modules: dict[str, QuantizedWeight], tensors: dict[str, torch.Tensor]) -> None:
    """TP=4: 64 intermediate columns per rank < group 128. No error anywhere, output all zero."""
    out, ref = _vllm_rank_w2(modules, tensors, tp=4, rank=1)
    _report("vllm w2 tp=4 rank=1 (defect)", out_abs_max=out.float().abs().max().item(),
            ref_abs_max=ref.abs().max().item())
    assert ref.abs().max().item() > 0
    assert out.float().abs().max().item() == 0.0


@pytest.mark.skipif(not os.environ.get("DEDICATED_VLLM_SOURCES") or not shutil.which("patch"),
                    reason="needs the pinned vLLM sources and the patch program")
def test_patched_vllm_refuses_the_defective_shard_and_accepts_the_control() -> None:
    import vllm_pin

    check = _patched_shard_check(vllm_pin)
    assert check(hidden_size=HIDDEN, intermediate_size_per_partition=INTER // 4,
                 group_size=GROUP, num_bits=2, tp_size=4) is not None
    assert check(hidden_size=HIDDEN, intermediate_size_per_partition=INTER // 2,
                 group_size=GROUP, num_bits=2, tp_size=2) is None


def _patched_shard_check(vllm_pin):  # noqa: ANN001, ANN202
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / vllm_pin.HUMMING_PY
        target.parent.mkdir(parents=True)
        shutil.copyfile(vllm_pin.pinned_sources() / vllm_pin.HUMMING_PY, target)
        for patch in sorted(vllm_pin.PATCH_DIR.glob("*.patch")):
            subprocess.run(["patch", "-p1", "--batch", "-i", str(patch)], cwd=tmp, check=True,
                           capture_output=True)
        source = target.read_text()
    return vllm_pin.extract_functions(source, {"humming_moe_shard_error": None},
                                      {})["humming_moe_shard_error"]


def test_spec_shapes_match_the_library_schema() -> None:
    from humming.schema import HummingWeightSchema

    for bits in (2, 3, 4, 8):
        ours = HummingSpec(bits=bits, group_size=GROUP)
        attrs = HummingWeightSchema(b_dtype=ours.b_dtype, weight_scale_group_size=GROUP,
                                    weight_scale_type="group").get_tensors_attrs(
            shape_n=256, shape_k=HIDDEN, param_dtype=torch.bfloat16)
        assert attrs["weight"]["shape"] == ours.weight_shape(256, HIDDEN)
        assert attrs["weight"]["dtype"] == torch.int32
        assert attrs["weight_scale"]["shape"] == ours.scale_shape(256, HIDDEN)
        assert attrs["weight_scale"]["dtype"] == torch.bfloat16


if __name__ == "__main__":
    main()
