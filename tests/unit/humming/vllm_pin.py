"""The pinned vLLM release's own files, fetched once with pip and cached under ~/.cache.

The serving image pins this version; the patch in images/serving/patches/ is made against it.
Only the few source files the tests read are kept (the wheel itself, ~340 MB, is deleted after
extraction), so CI pays for the download once per machine.
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

VLLM_VERSION = "0.33.0"
HUMMING_PY = "vllm/model_executor/layers/quantization/humming.py"
ROUTED_EXPERTS_PY = "vllm/model_executor/layers/fused_moe/routed_experts.py"
FILES = (HUMMING_PY, ROUTED_EXPERTS_PY)
# sha256 of the pristine humming.py in the vllm 0.33.0 wheel: the patch was written against it.
HUMMING_PY_SHA256 = "2c72b625daa09867d892cf9a0eed9dd2d35266c5091e1767248fd14f0fdb2286"
PATCH_DIR = Path(__file__).resolve().parents[3] / "images" / "serving" / "patches"


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "dedicated" / f"vllm-{VLLM_VERSION}"


def pinned_sources() -> Path:
    """Directory holding FILES from the pinned wheel (downloaded on first use)."""
    root = Path(os.environ.get("DEDICATED_VLLM_SOURCES", cache_dir()))
    if all((root / f).is_file() for f in FILES):
        return root
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
             "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
             "--dest", tmp, f"vllm=={VLLM_VERSION}"],
            check=True,
        )
        wheel = next(Path(tmp).glob("vllm-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for name in FILES:
                target = root / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
    return root


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def extract_functions(source: str, names: dict[str, str | None], namespace: dict[str, Any]) -> dict[str, Any]:
    """Compile selected top-level functions or class methods of a vLLM file on their own.

    ``names`` maps a function name to its class (or None for a module-level function). The code
    is vLLM's, unmodified; only its module (and its heavy imports) is left out.
    """
    tree = ast.parse(source)
    found: dict[str, ast.FunctionDef] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and names.get(node.name, "?") is None:
            found[node.name] = node
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and names.get(item.name) == node.name:
                    item.decorator_list = []
                    found[item.name] = item
    missing = set(names) - set(found)
    if missing:
        raise LookupError(f"not found in pinned vLLM source: {sorted(missing)}")
    module = ast.Module(body=list(found.values()), type_ignores=[])
    exec(compile(module, "<pinned-vllm>", "exec"), namespace)
    return {name: namespace[name] for name in names}


def fused_moe_w2_loader(tp_size: int, tp_rank: int) -> Any:
    """vLLM's own RoutedExperts._load_w2 bound to a stand-in layer with the given TP rank."""
    import torch

    source = (pinned_sources() / ROUTED_EXPERTS_PY).read_text()
    namespace: dict[str, Any] = {"torch": torch, "cdiv": lambda a, b: -(-a // b)}
    fns = extract_functions(
        source,
        {"_load_w2": "RoutedExperts", "_get_hidden_dim": "RoutedExperts",
         "_narrow_expert_data_for_padding": "RoutedExperts"},
        namespace,
    )
    layer = SimpleNamespace(
        moe_config=SimpleNamespace(moe_parallel_config=SimpleNamespace(tp_size=tp_size)),
        _get_hidden_dim=fns["_get_hidden_dim"],
        _narrow_expert_data_for_padding=fns["_narrow_expert_data_for_padding"],
    )

    def load(expert_data: "torch.Tensor", loaded_weight: "torch.Tensor") -> None:
        fns["_load_w2"](layer, expert_data=expert_data, shard_dim=1, loaded_weight=loaded_weight,
                        tp_rank=tp_rank)

    return load
