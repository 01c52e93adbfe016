"""The `ignore` list of a Humming `config.json`, with vLLM's matching rules.

vLLM's `HummingConfig.is_layer_skipped` regex-matches entries that start with ``re:`` (``re.match``,
anchored at the start only) and substring-matches every other entry. A compressed-tensors ignore
list names modules exactly, so copying its plain names over would turn ``...mlp.gate`` into a
substring that also skips ``...mlp.gate_up_proj``; plain names are therefore rewritten as anchored
regexes. A quantized module that an ignore entry matches would be loaded as BF16 by vLLM, so the
converter refuses such a list instead of writing a checkpoint that cannot load.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_EXPERT = re.compile(r"^(?P<prefix>.*\.experts)\.\d+\.[^.]+$")


def matches(pattern: str, module: str) -> bool:
    """Whether vLLM would skip ``module`` for this ignore entry."""
    if pattern.startswith("re:"):
        return re.match(pattern[3:], module) is not None
    return pattern in module


def exact_name(module: str) -> str:
    """An ignore entry that matches ``module`` and nothing else."""
    return "re:" + re.escape(module) + "$"


def merge(defaults: Sequence[str], checkpoint_ignore: Iterable[str]) -> list[str]:
    """Defaults first, then the source checkpoint's entries (plain names made exact), deduplicated."""
    merged: list[str] = list(dict.fromkeys(defaults))
    for entry in checkpoint_ignore:
        if entry in merged:
            continue
        entry = entry if entry.startswith("re:") else exact_name(entry)
        if entry not in merged:
            merged.append(entry)
    return merged


def vllm_prefixes(module: str) -> list[str]:
    """The layer prefixes vLLM asks about for a checkpoint module.

    Routed experts are one fused layer (``...mlp.experts``) in vLLM, so the ignore list must not
    match that prefix either.
    """
    found = _EXPERT.match(module)
    return [module, found.group("prefix")] if found else [module]


def conflicts(quantized_modules: Iterable[str], ignore: Sequence[str]) -> list[tuple[str, str]]:
    """(module, pattern) pairs where a quantized module would be skipped by the ignore list."""
    clashes = []
    for module in quantized_modules:
        for prefix in vllm_prefixes(module):
            for pattern in ignore:
                if matches(pattern, prefix):
                    clashes.append((prefix, pattern))
    return sorted(set(clashes))
