"""The serving image's vLLM fix: the defect it fixes, and that it still applies to the pinned file.

The pinned vLLM wheel's files are fetched with pip once and cached under ~/.cache (vllm_pin.py);
vLLM itself is never imported (it needs a GPU build), but its own loader function is compiled
from the pinned source and run on CPU tensors.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import vllm_pin  # noqa: E402

DOCKERFILE = vllm_pin.PATCH_DIR.parent / "Dockerfile"
PATCHES = sorted(vllm_pin.PATCH_DIR.glob("*.patch"))


@pytest.fixture(scope="module")
def sources() -> Path:
    return vllm_pin.pinned_sources()


@pytest.fixture(scope="module")
def patched(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vllm")
    target = root / vllm_pin.HUMMING_PY
    target.parent.mkdir(parents=True)
    shutil.copyfile(sources / vllm_pin.HUMMING_PY, target)
    for patch in PATCHES:
        subprocess.run(["patch", "-p1", "--forward", "--batch", "-i", str(patch)], cwd=root,
                       check=True, capture_output=True)
    return target


def test_pinned_file_is_the_one_the_patch_was_written_against(sources: Path) -> None:
    assert vllm_pin.sha256(sources / vllm_pin.HUMMING_PY) == vllm_pin.HUMMING_PY_SHA256


def test_dockerfile_pins_the_same_vllm_and_applies_every_patch() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(rf"^ARG VLLM_VERSION={re.escape(vllm_pin.VLLM_VERSION)}$", text, re.M)
    assert re.search(r"^ARG HUMMING_KERNELS_VERSION=\d+\.\d+\.\d+$", text, re.M)
    assert PATCHES, "no patch files"
    assert "patches/" in text and "patch -p1" in text


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name)
def test_patch_applies_cleanly_to_the_pinned_file(sources: Path, tmp_path: Path,
                                                  patch: Path) -> None:
    target = tmp_path / vllm_pin.HUMMING_PY
    target.parent.mkdir(parents=True)
    shutil.copyfile(sources / vllm_pin.HUMMING_PY, target)
    dry = subprocess.run(["patch", "-p1", "--dry-run", "--batch", "-i", str(patch)], cwd=tmp_path,
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "offset" not in dry.stdout and "fuzz" not in dry.stdout, dry.stdout
    check = subprocess.run(["git", "apply", "--check", str(patch)], cwd=tmp_path,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_patched_file_is_valid_python(patched: Path) -> None:
    compile(patched.read_text(), str(patched), "exec")


# --- the defect, shown with vLLM's own loader code -------------------------------------------


def _w2_scales_each_rank_loads(hidden: int, inter: int, group: int, tp: int) -> list[torch.Tensor]:
    """Run vLLM 0.33.0's RoutedExperts._load_w2 for each rank on a Humming w2 group scale.

    The per-rank parameter has the shape HummingMoEMethod.create_weights gives it through
    HummingWeightSchema.get_tensors_attrs: ``[hidden, (inter // tp) // group]``.
    """
    checkpoint = torch.arange(hidden * (inter // group), dtype=torch.float32).reshape(
        hidden, inter // group) + 1
    loaded = []
    for rank in range(tp):
        param = torch.full((hidden, (inter // tp) // group), float("nan"))
        vllm_pin.fused_moe_w2_loader(tp, rank)(param, checkpoint)
        loaded.append(param)
    return loaded


def test_defect_tp8_leaves_every_rank_without_w2_scales(sources: Path) -> None:
    """Qwen3.6-35B-A3B: moe_intermediate_size 512, group 128; TP=8 gives 64 columns per rank."""
    per_rank = _w2_scales_each_rank_loads(hidden=8, inter=512, group=128, tp=8)
    # No error is raised, yet no rank holds a single scale column: Humming pads the missing
    # group with zeros, so every routed expert's down projection outputs zero.
    assert all(p.shape[1] == 0 for p in per_rank)


def test_defect_misaligned_groups_load_other_ranks_scales(sources: Path) -> None:
    """intermediate 768, group 128, TP=4: 192 columns per rank straddle scale groups."""
    group, inter, tp = 128, 768, 4
    per_rank = _w2_scales_each_rank_loads(hidden=2, inter=inter, group=group, tp=tp)
    wrong = 0
    for rank, param in enumerate(per_rank):
        first_column = rank * inter // tp
        needed_group = first_column // group  # the group of this rank's first input column
        got = int(param[0, 0]) - 1
        wrong += got != needed_group
    assert wrong == 2  # ranks 2 and 3 silently multiply by another rank's scales


def _shard_error(patched: Path):  # noqa: ANN202
    fns = vllm_pin.extract_functions(patched.read_text(), {"humming_moe_shard_error": None}, {})
    return fns["humming_moe_shard_error"]


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_fix_accepts_whole_group_shards(patched: Path, tp: int) -> None:
    check = _shard_error(patched)
    assert check(hidden_size=2048, intermediate_size_per_partition=512 // tp, group_size=128,
                 num_bits=2, tp_size=tp) is None


def test_fix_rejects_the_tp8_shard_with_a_clear_message(patched: Path) -> None:
    message = _shard_error(patched)(hidden_size=2048, intermediate_size_per_partition=64,
                                    group_size=128, num_bits=2, tp_size=8)
    assert "intermediate_size_per_partition (w2 input)=64 is not a multiple of " \
           "weight_scale_group_size=128" in message
    assert "tensor_parallel_size=8" in message and "--enable-expert-parallel" in message


def test_fix_rejects_three_bit_shards_that_split_a_word(patched: Path) -> None:
    message = _shard_error(patched)(hidden_size=2048, intermediate_size_per_partition=48,
                                    group_size=0, num_bits=3, tp_size=4)
    assert "does not fill whole int32 words at 3 bits" in message


def test_fix_is_wired_into_humming_moe_create_weights(patched: Path) -> None:
    import ast

    tree = ast.parse(patched.read_text())
    method = next(item for node in tree.body if isinstance(node, ast.ClassDef)
                  and node.name == "HummingMoEMethod" for item in node.body
                  if isinstance(item, ast.FunctionDef) and item.name == "create_weights")
    calls = [n for n in ast.walk(method) if isinstance(n, ast.Call)
             and getattr(n.func, "id", None) == "humming_moe_shard_error"]
    raises = [n for n in ast.walk(method) if isinstance(n, ast.Raise)]
    assert calls and raises
    # The check runs before any parameter is allocated.
    first_alloc = min(n.lineno for n in ast.walk(method) if isinstance(n, ast.Assign)
                      and any(getattr(t, "attr", None) == "sublayer_configs" for t in n.targets))
    assert calls[0].lineno < first_alloc
