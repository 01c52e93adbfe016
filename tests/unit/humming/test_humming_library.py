"""Our format against the real `humming-kernels` library, on CPU (its schema code needs no GPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import checkpoints as ck  # noqa: E402
import vllm_pin  # noqa: E402

from dedicated.quantize_job.humming import DEFAULT_IGNORE, HummingSpec, repack_checkpoint  # noqa: E402

humming_schema = pytest.importorskip("humming.schema")


def test_our_config_block_parses_as_the_library_schema() -> None:
    config = HummingSpec(bits=2, group_size=128).quantization_config(DEFAULT_IGNORE)
    schema = humming_schema.BaseWeightSchema.from_config(config)
    assert isinstance(schema, humming_schema.HummingWeightSchema)
    assert str(schema.b_dtype) == "uint2" and schema.b_dtype.num_bits == 2
    assert schema.weight_scale_group_size == 128
    assert schema.weight_scale_type.value == "group"
    assert schema.has_zero_point is False and schema.bs_dtype is None


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_tensor_shapes_and_dtypes_match_the_library(bits: int) -> None:
    ours = HummingSpec(bits=bits, group_size=128)
    attrs = humming_schema.HummingWeightSchema(
        b_dtype=ours.b_dtype, weight_scale_group_size=128, weight_scale_type="group"
    ).get_tensors_attrs(shape_n=384, shape_k=1024, param_dtype=torch.bfloat16)
    assert set(attrs) == {"weight", "weight_scale"}
    assert attrs["weight"]["shape"] == ours.weight_shape(384, 1024)
    assert attrs["weight"]["dtype"] == torch.int32
    assert attrs["weight"]["extra_attrs"]["packed_dim"] == 1  # packed along the input dim
    assert attrs["weight_scale"]["shape"] == ours.scale_shape(384, 1024)
    assert attrs["weight_scale"]["dtype"] == torch.bfloat16


def test_library_infers_shapes_from_a_repacked_checkpoint(tmp_path: Path) -> None:
    modules = {"model.layers.0.mlp.experts.0.down_proj": ck.random_weight(96, 256, 2, 128)}
    src = ck.write_source(tmp_path / "src", modules=modules, other={}, container_bits=4)
    repack_checkpoint(src, tmp_path / "dst", bits=2)
    config = json.loads((tmp_path / "dst" / "config.json").read_text())["quantization_config"]
    schema = humming_schema.BaseWeightSchema.from_config(config)
    tensors = {k.rsplit(".", 1)[-1]: v for k, v in ck.load_all(tmp_path / "dst").items()}
    assert schema.infer_shape(tensors) == (96, 256, None, False)
    schema.validate_tensors(tensors, 96, 256, torch.bfloat16)  # the library's own shape/dtype check


def test_defect_library_allocates_zero_scale_columns_and_vllm_loads_nothing() -> None:
    """vLLM sizes a TP rank's w2 with the library; at 64 columns per rank there is no scale."""
    schema = humming_schema.HummingWeightSchema(b_dtype="uint2", weight_scale_group_size=128,
                                                weight_scale_type="group")
    hidden, inter, experts, tp = 16, 512, 2, 8
    attrs = schema.get_padded_tensors_attrs(shape_n=hidden, shape_k=inter // tp,
                                            num_experts=experts, param_dtype=torch.bfloat16)
    assert attrs["weight_scale"]["shape"] == (experts, hidden, 0)
    checkpoint_scale = torch.ones(hidden, inter // 128, dtype=torch.bfloat16)
    param = torch.empty(attrs["weight_scale"]["shape"], dtype=torch.bfloat16)
    vllm_pin.fused_moe_w2_loader(tp, 3)(param[0], checkpoint_scale)  # no error from vLLM
    assert param.numel() == 0
