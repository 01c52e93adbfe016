"""The streaming repack: exactness, byte-identical passthrough, rewritten metadata, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
import checkpoints as ck  # noqa: E402
from strategies import quantized_weights  # noqa: E402

from dedicated.quantize_job import compressed_tensors_io as ct  # noqa: E402
from dedicated.quantize_job.humming import (  # noqa: E402
    DEFAULT_IGNORE,
    HummingSpec,
    RepackError,
    dequantize,
    from_humming,
    repack_checkpoint,
)
from dedicated.quantize_job.qtensor import QuantizedWeight  # noqa: E402


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Multi-shard 2-bit-in-4-bit-container checkpoint (what GSQ training exports)."""
    return ck.write_source(tmp_path_factory.mktemp("ct") / "src", container_bits=4)


@pytest.fixture(scope="module")
def repacked(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    dst = tmp_path_factory.mktemp("out") / "humming"
    report = repack_checkpoint(source, dst, bits=2)
    return dst, report


def test_every_dequantized_value_is_unchanged(repacked: tuple[Path, object]) -> None:
    dst, _ = repacked
    tensors = ck.load_all(dst)
    spec = HummingSpec(bits=2, group_size=32)
    modules = ck.moe_and_dense_modules()
    for name, weight in modules.items():
        packed, scale = tensors[f"{name}.weight"], tensors[f"{name}.weight_scale"]
        assert packed.dtype == torch.int32 and scale.dtype == torch.bfloat16
        assert torch.equal(dequantize(packed, scale, spec), weight.dequantize(torch.float32)), name
        assert torch.equal(from_humming(packed, scale, spec).codes, weight.codes)
    assert not any(n.endswith(("weight_packed", "weight_shape")) for n in tensors)


def test_moe_expert_and_dense_naming(repacked: tuple[Path, object]) -> None:
    dst, report = repacked
    tensors = ck.load_all(dst)
    assert "model.layers.0.mlp.experts.2.down_proj.weight" in tensors
    assert tensors["model.layers.0.mlp.experts.2.down_proj.weight"].shape == (128, 64 * 2 // 32)
    assert tensors["model.layers.2.mlp.gate_proj.weight"].shape == (96, 128 * 2 // 32)
    assert report.quantized_modules == 2 * 3 * 3 + 3
    assert report.expert_modules == 2 * 3 * 3


def test_non_quantized_tensors_are_byte_identical(source: Path,
                                                  repacked: tuple[Path, object]) -> None:
    dst, _ = repacked
    before, after = ck.raw_tensor_digests(source), ck.raw_tensor_digests(dst)
    floats = ck.float_tensors()
    assert floats.keys() <= after.keys()
    for name in floats:
        assert after[name] == before[name], name
    assert (dst / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()


def test_index_and_config_are_rewritten(source: Path, repacked: tuple[Path, object]) -> None:
    dst, _ = repacked
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    tensors_by_file: dict[str, set[str]] = {}
    for name, file in index["weight_map"].items():
        tensors_by_file.setdefault(file, set()).add(name)
    from safetensors import safe_open

    for file, names in tensors_by_file.items():
        with safe_open(str(dst / file), "pt") as f:
            assert set(f.keys()) == names
    assert set(index["weight_map"]) == set(ck.load_all(dst))
    sizes = sum((dst / f).stat().st_size for f in tensors_by_file)
    assert index["metadata"]["total_size"] < sizes  # tensor bytes only, headers excluded
    config = json.loads((dst / "config.json").read_text())
    quant = config["quantization_config"]
    assert quant == {"quant_method": "humming", "b_dtype": "uint2", "weight_scale_group_size": 32,
                     "weight_scale_type": "group", "has_zero_point": False,
                     "ignore": list(DEFAULT_IGNORE)}
    source_config = json.loads((source / "config.json").read_text())
    assert {k: v for k, v in config.items() if k != "quantization_config"} == {
        k: v for k, v in source_config.items() if k != "quantization_config"}


def test_bits_per_weight_is_two_plus_sixteen_over_128(tmp_path: Path) -> None:
    modules = {f"model.layers.0.mlp.experts.{e}.{p}": ck.random_weight(256, 256, 2, 128, e)
               for e in range(4) for p in ("gate_proj", "up_proj", "down_proj")}
    src = ck.write_source(tmp_path / "src", modules=modules, other={}, container_bits=4)
    dst = tmp_path / "dst"
    report = repack_checkpoint(src, dst, bits=2)
    tensors = ck.load_all(dst)
    bits = sum(t.numel() * t.element_size() * 8 for t in tensors.values())
    weights = sum(w.codes.numel() for w in modules.values())
    assert bits / weights == 2 + 16 / 128 == report.bits_per_weight


@settings(max_examples=12, deadline=None)
@given(weight=quantized_weights(), wider=st.booleans())
def test_dequantize_repack_equals_dequantize_for_every_value(weight: QuantizedWeight,
                                                              wider: bool) -> None:
    container = 8 if wider else weight.bits
    with tempfile.TemporaryDirectory() as tmp:
        src = ck.write_source(Path(tmp) / "src", modules={"model.layers.0.mlp.experts.0.up_proj":
                                                          weight},
                              other={}, container_bits=container)
        repack_checkpoint(src, Path(tmp) / "dst", bits=weight.bits)
        t = ck.load_all(Path(tmp) / "dst")
        spec = HummingSpec(weight.bits, weight.group_size)
        got = dequantize(t["model.layers.0.mlp.experts.0.up_proj.weight"],
                         t["model.layers.0.mlp.experts.0.up_proj.weight_scale"], spec)
        assert torch.equal(got, weight.dequantize(torch.float32))


def test_module_split_across_shards(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    weight = ck.random_weight(32, 64, 2, 32)
    tensors = ct.module_tensors(weight, "model.layers.0.mlp.experts.0.gate_proj")
    names = sorted(tensors)
    src = tmp_path / "src"
    src.mkdir()
    save_file({names[0]: tensors[names[0]]}, str(src / "a.safetensors"))
    save_file({n: tensors[n] for n in names[1:]}, str(src / "b.safetensors"))
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {names[0]: "a.safetensors",
                                        **{n: "b.safetensors" for n in names[1:]}}}))
    (src / "config.json").write_text(json.dumps(
        {"quantization_config": ct.quantization_config(2, 32)}))
    repack_checkpoint(src, tmp_path / "dst")
    out = ck.load_all(tmp_path / "dst")
    assert torch.equal(dequantize(out["model.layers.0.mlp.experts.0.gate_proj.weight"],
                                  out["model.layers.0.mlp.experts.0.gate_proj.weight_scale"],
                                  HummingSpec(2, 32)), weight.dequantize())


# --- bad input: clear error, input untouched, nothing left that looks like a checkpoint ---------


def _assert_failed_cleanly(src: Path, dst: Path, before: dict[str, str]) -> None:
    assert ck.tree_digest(src) == before
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.")]


def _copy(source: Path, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(source, src)
    return src


def test_truncated_shard(source: Path, tmp_path: Path) -> None:
    src = _copy(source, tmp_path)
    shard = sorted(src.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    before = ck.tree_digest(src)
    with pytest.raises(RepackError, match=f"{shard.name}.*truncated"):
        repack_checkpoint(src, tmp_path / "dst")
    _assert_failed_cleanly(src, tmp_path / "dst", before)


def test_truncation_found_after_other_shards_were_written(source: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure mid-way (here: a tensor read cut short) removes the partial output."""
    import dedicated.quantize_job.humming.repack as repack_module

    src = _copy(source, tmp_path)
    before = ck.tree_digest(src)
    calls = {"n": 0}
    real = repack_module.read_tensor

    def failing(shard, name):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] > 30:
            raise repack_module.RepackError(f"{shard.path.name}: {name!r} is cut short")
        return real(shard, name)

    monkeypatch.setattr(repack_module, "read_tensor", failing)
    with pytest.raises(RepackError, match="cut short"):
        repack_checkpoint(src, tmp_path / "dst")
    _assert_failed_cleanly(src, tmp_path / "dst", before)


def test_group_size_that_does_not_divide(tmp_path: Path) -> None:
    weight = QuantizedWeight(codes=torch.zeros(4, 96, dtype=torch.int8),
                             scales=torch.ones(4, 1, dtype=torch.bfloat16), bits=2, group_size=96)
    src = ck.write_source(tmp_path / "src", modules={"model.layers.0.mlp.experts.0.up_proj": weight},
                          other={})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] = 64
    (src / "config.json").write_text(json.dumps(config))
    before = ck.tree_digest(src)
    with pytest.raises(RepackError, match="group size 64 does not divide in_features 96"):
        repack_checkpoint(src, tmp_path / "dst")
    _assert_failed_cleanly(src, tmp_path / "dst", before)


@pytest.mark.parametrize(
    ("quant", "message"),
    [
        ({"quant_method": "gptq", "bits": 4}, "quant_method is 'gptq'"),
        ({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {
            "group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float"}}}},
         "format is 'float-quantized'"),
        (None, "no quantization_config"),
        ({"quant_method": "humming", "b_dtype": "uint2"}, "already in Humming format"),
    ],
)
def test_wrong_quant_method(source: Path, tmp_path: Path, quant: dict | None,
                            message: str) -> None:
    src = _copy(source, tmp_path)
    config = json.loads((src / "config.json").read_text())
    if quant is None:
        config.pop("quantization_config")
    else:
        config["quantization_config"] = quant
    (src / "config.json").write_text(json.dumps(config))
    before = ck.tree_digest(src)
    with pytest.raises(RepackError, match=message):
        repack_checkpoint(src, tmp_path / "dst")
    _assert_failed_cleanly(src, tmp_path / "dst", before)


def test_repacking_a_humming_checkpoint_again_is_refused(repacked: tuple[Path, object],
                                                         tmp_path: Path) -> None:
    dst, _ = repacked
    before = ck.tree_digest(dst)
    with pytest.raises(RepackError, match="already in Humming format"):
        repack_checkpoint(dst, tmp_path / "again")
    assert ck.tree_digest(dst) == before


def test_codes_that_do_not_fit_the_requested_width(tmp_path: Path) -> None:
    weight = ck.random_weight(8, 64, bits=4, group=32)
    src = ck.write_source(tmp_path / "src", modules={"model.layers.0.mlp.experts.0.up_proj":
                                                     weight}, other={})
    before = ck.tree_digest(src)
    with pytest.raises(RepackError, match=r"does not fit the 2-bit range \[-2, 1\]"):
        repack_checkpoint(src, tmp_path / "dst", bits=2)
    _assert_failed_cleanly(src, tmp_path / "dst", before)


def test_destination_that_exists_is_left_alone(source: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep").write_text("x")
    with pytest.raises(RepackError, match="already exists"):
        repack_checkpoint(source, dst)
    assert (dst / "keep").read_text() == "x"


def test_ignore_list_that_would_skip_quantized_experts(source: Path, tmp_path: Path) -> None:
    with pytest.raises(RepackError, match=r"mlp\.experts matches 're:.*experts.*'"):
        repack_checkpoint(source, tmp_path / "dst", bits=2, extra_ignore=["re:.*experts.*"])
    assert not (tmp_path / "dst").exists()


def test_missing_shard(source: Path, tmp_path: Path) -> None:
    src = _copy(source, tmp_path)
    sorted(src.glob("*.safetensors"))[0].unlink()
    with pytest.raises(RepackError, match="missing"):
        repack_checkpoint(src, tmp_path / "dst")


def test_cli_repack(source: Path, tmp_path: Path) -> None:
    dst = tmp_path / "cli-out"
    done = subprocess.run([sys.executable, "-m", "dedicated.cli", "repack", str(source), str(dst),
                           "--bits", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "uint2, group 32: 2.5000 bits per quantized weight" in done.stdout
    assert json.loads((dst / "config.json").read_text())["quantization_config"]["b_dtype"] == "uint2"
    again = subprocess.run([sys.executable, "-m", "dedicated.cli", "repack", str(dst),
                            str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert "already in Humming format" in again.stderr
