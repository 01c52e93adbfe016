"""Regenerate the example model-facts ConfigMaps (``python examples/model-facts/generate.py``).

The example endpoints serve three Qwen3.6-35B-A3B checkpoints from a volume: the 2-bit GSQ
checkpoint in Humming format, the 4-bit AutoRound checkpoint and the BF16 original. The operator
cannot read volumes, so each gets a ConfigMap with the checkpoint's config.json and tensor table
(see ``dedicated model-facts``). Their shapes come from the public model config, written into
sparse safetensors files by the test suite's model zoo (``tests/unit/operator/modelzoo.py``: real
headers, no data), then read back exactly as ``dedicated model-facts <dir>`` reads a real
checkpoint. A unit test fails when these files are stale.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CLAIM = "models"
#: (file stem / ConfigMap name, modelzoo variant, path inside the claim, what it is)
MODELS = (
    ("qwen3.6-35b-a3b-gsq-w2", "humming", "Qwen3.6-35B-A3B, routed experts GSQ 2-bit, Humming format"),
    ("qwen3.6-35b-a3b-autoround-w4", "autoround", "Qwen3.6-35B-A3B, AutoRound W4A16 (auto_round:auto_gptq)"),
    ("qwen3.6-35b-a3b-bf16", "bf16", "Qwen3.6-35B-A3B, BF16 original"),
)


def modelzoo():
    spec = importlib.util.spec_from_file_location("operator_modelzoo", REPO / "tests/unit/operator/modelzoo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("operator_modelzoo", module)
    spec.loader.exec_module(module)
    return module


def configmap(checkpoint_dir: Path, stem: str, what: str) -> dict:
    from dedicated.operator.modelfacts import FactsLocation, facts_configmap
    from dedicated.operator.vram.checkpoint import read_local

    ck = dataclasses.replace(read_local(checkpoint_dir), source=f"{what} (example facts: examples/model-facts/generate.py)")
    return facts_configmap(ck, FactsLocation(CLAIM, stem), name=f"{stem}-facts")


def render(cm: dict) -> str:
    from dedicated.operator.modelfacts import to_yaml

    return to_yaml(cm)


def main() -> int:
    zoo = modelzoo()
    with tempfile.TemporaryDirectory() as tmp:
        for stem, variant, what in MODELS:
            ckpt = zoo.qwen36(Path(tmp) / stem, variant)
            (HERE / f"{stem}.yaml").write_text(render(configmap(ckpt, stem, what)))
            print(f"wrote examples/model-facts/{stem}.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
