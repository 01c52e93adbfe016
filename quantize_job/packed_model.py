"""A Humming checkpoint as a transformers model whose routed experts stay packed.

Why: the other way to run a Humming checkpoint here, dequantizing it to BF16 first
(``validate.dequantize_humming_checkpoint``), needs the BF16 model's memory and a BF16 copy on disk:
~70 GB for a 35B MoE whose 2-bit checkpoint is ~12-14 GB (the design card's reference checkpoints),
so on one 80 GB GPU validation streams layers from CPU memory. Here every routed-expert module is swapped for
:class:`PackedExperts`, which keeps the int32 words and bf16 group scales exactly as the checkpoint
stores them and runs them through the bundled Triton MoE dequant-GEMM
(``dedicated.kernels.moe_gemm.fused_moe``); everything else loads as BF16. What gets measured is the
packed words through a low-bit GEMM, as a server runs them.

Scope, checked while loading (anything else raises :class:`PackedModelUnsupported`, and the caller
falls back to the dequantized path): a transformers model whose experts modules follow the
``use_experts_implementation`` contract (3-D ``gate_up_proj`` ``[E, 2I, H]`` gate first, ``down_proj``
``[E, H, I]``, no bias, not transposed), every expert's gate/up/down stored as packed Linears under
``<experts>.<e>.<gate|up|down>`` names (the per-expert checkpoint layout), and every other model
tensor present under its own name or the one transformers' loading renames it from (the
multimodal Qwen3.5/3.6-MoE checkpoints' ``model.language_model.`` prefix). Checkpoint tensors the model has no place for (an MTP head, a
vision tower read by another model class) are skipped, as ``from_pretrained`` skips them.

The kernels run on CUDA; on the CPU only under Triton's interpreter (tests).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("dedicated.quantize_job")

# Per-expert Linear names, (gate, up, down), in the checkpoint layouts transformers converts from.
EXPERT_PROJECTION_NAMES: tuple[tuple[str, str, str], ...] = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))


class PackedModelUnsupported(Exception):
    """This checkpoint or model class is outside what :func:`load_packed_model` can run."""


class PackedExperts(nn.Module):
    """Drop-in for a transformers experts module, with the experts' weights still packed.

    Same call as the module it replaces: ``(hidden_states [T, H], top_k_index [T, k],
    top_k_weights [T, k]) -> [T, H]``. ``gate`` is the replaced module's ``_apply_gate`` (its own
    activation: SwiGLU for most models), so a model with another gate keeps it.
    """

    def __init__(self, num_experts: int, hidden: int, intermediate: int, bits: int, group_size: int,
                 gate: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        if hidden % group_size or intermediate % group_size:
            raise PackedModelUnsupported(f"expert widths {hidden} / {intermediate} are not whole groups of {group_size}")
        words = 32 // bits
        self.bits, self.group_size, self.gate = bits, group_size, gate
        self.register_buffer("w13", torch.empty(num_experts, 2 * intermediate, hidden // words, dtype=torch.int32))
        self.register_buffer("s13", torch.empty(num_experts, 2 * intermediate, hidden // group_size, dtype=torch.bfloat16))
        self.register_buffer("w2", torch.empty(num_experts, hidden, intermediate // words, dtype=torch.int32))
        self.register_buffer("s2", torch.empty(num_experts, hidden, intermediate // group_size, dtype=torch.bfloat16))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        from dedicated.kernels.moe_gemm import fused_moe

        x = hidden_states.to(torch.bfloat16).contiguous()
        y = fused_moe(x, self.w13, self.s13, self.w2, self.s2, top_k_index, top_k_weights.float(), self.bits,
                      self.group_size, activation=self.gate)
        return y.to(hidden_states.dtype)

    def slots(self, e: int, intermediate: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Where expert ``e``'s gate, up and down words and scales go, by projection role."""
        return {"gate": (self.w13[e, :intermediate], self.s13[e, :intermediate]),
                "up": (self.w13[e, intermediate:], self.s13[e, intermediate:]),
                "down": (self.w2[e], self.s2[e])}


@dataclass(frozen=True)
class _ExpertsSite:
    """One experts module of the model and the checkpoint names of its packed experts."""

    name: str
    module: PackedExperts
    intermediate: int
    names: dict[str, tuple[int, str]]  # checkpoint weight name -> (expert, role)


def load_packed_model(checkpoint: Path, device: torch.device) -> nn.Module:
    """The causal LM of a Humming checkpoint on ``device``, routed experts packed, ready for eval."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from dedicated.quantize_job.humming.format import HummingFormatError, HummingSpec

    raw = json.loads((checkpoint / "config.json").read_text())
    try:
        spec = HummingSpec.from_quantization_config(raw.get("quantization_config") or {})
    except HummingFormatError as exc:
        raise PackedModelUnsupported(f"not a Humming checkpoint: {exc}") from None
    config = AutoConfig.from_pretrained(str(checkpoint))
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    header = _checkpoint_header(checkpoint, _key_renamer(model))
    sites = [_swap_experts(model, name, module, spec.bits, spec.group_size, header)
             for name, module in list(model.named_modules()) if _is_experts_module(module)]
    if not sites:
        raise PackedModelUnsupported(f"{type(model).__name__} has no routed-experts module to run packed")
    model.to_empty(device=device)
    loaded = _load_tensors(model, checkpoint, header, sites, device)
    _initialise_the_rest(model, loaded, sites)
    model.eval()
    log.info("loaded %s with %d experts modules packed (%d-bit, group %d) on %s", type(model).__name__,
             len(sites), spec.bits, spec.group_size, device)
    return model


@dataclass(frozen=True)
class _Stored:
    """One checkpoint tensor, by the name the model knows it under."""

    file: str
    key: str  # the name in the checkpoint
    dtype: torch.dtype
    shape: tuple[int, ...]


def _key_renamer(model: nn.Module) -> Callable[[str], str]:
    """The checkpoint-to-model renames transformers applies while loading this model class.

    Only its renamings (a ``model.language_model.`` prefix dropped for the Qwen3.5/3.6-MoE text
    model, legacy names); its converters fuse the per-expert BF16 tensors, which this loader does
    itself for the packed ones. Without that part of transformers, names are taken as they are.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, apply_renamings
    except ImportError:  # another transformers: checkpoint names must be the model's own
        return lambda key: key
    renamings = [t for t in get_model_conversion_mapping(model)
                 if isinstance(t, WeightRenaming) and not isinstance(t, WeightConverter)]
    return lambda key: apply_renamings(key, renamings) if renamings else key


def _checkpoint_header(checkpoint: Path, rename: Callable[[str], str]) -> dict[str, _Stored]:
    """Every tensor of the checkpoint by its model name, without reading data."""
    from safetensors import safe_open

    header: dict[str, _Stored] = {}
    for shard in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                header[rename(key)] = _Stored(shard.name, key, _DTYPES[sl.get_dtype()], tuple(sl.get_shape()))
    if not header:
        raise PackedModelUnsupported(f"{checkpoint} holds no safetensors shards")
    return header


_DTYPES = {"I32": torch.int32, "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
           "I64": torch.int64, "U8": torch.uint8, "I8": torch.int8, "BOOL": torch.bool,
           "F64": torch.float64, "I16": torch.int16}


def _is_experts_module(module: nn.Module) -> bool:
    """A transformers experts module: 3-D fused expert weights and the experts-interface flags."""
    w = getattr(module, "gate_up_proj", None)
    return isinstance(w, nn.Parameter) and w.dim() == 3 and hasattr(module, "_apply_gate") \
        and isinstance(getattr(module, "down_proj", None), nn.Parameter)


def _swap_experts(model: nn.Module, name: str, module: nn.Module, bits: int, group_size: int,
                  header: dict[str, _Stored]) -> _ExpertsSite:
    """Replace one experts module by a :class:`PackedExperts` (on meta) and name its checkpoint tensors."""
    for flag, wanted in (("has_gate", True), ("has_bias", False), ("is_transposed", False),
                         ("is_concatenated", True), ("has_post_expert_norm", False)):
        if getattr(module, flag, wanted) != wanted:
            raise PackedModelUnsupported(f"{name}: experts with {flag}={not wanted} are not supported")
    e, two_i, hidden = module.gate_up_proj.shape
    intermediate = two_i // 2
    if tuple(module.down_proj.shape) != (e, hidden, intermediate):
        raise PackedModelUnsupported(f"{name}: down_proj {tuple(module.down_proj.shape)} does not match gate_up_proj")
    names = _expert_names(name, e, header)
    packed = PackedExperts(e, hidden, intermediate, bits, group_size, module._apply_gate)
    for weight, (expert, role) in names.items():
        want = tuple(packed.slots(expert, intermediate)[role][0].shape)
        stored = header[weight]
        if stored.dtype != torch.int32 or stored.shape != want or f"{weight}_scale" not in header:
            raise PackedModelUnsupported(f"{stored.key}: expected packed int32 {want} with a weight_scale, "
                                         f"found {stored.dtype} {stored.shape}")
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, packed)
    return _ExpertsSite(name=name, module=packed, intermediate=intermediate, names=names)


def _expert_names(name: str, experts: int, header: dict[str, _Stored]) -> dict[str, tuple[int, str]]:
    for gate, up, down in EXPERT_PROJECTION_NAMES:
        names = {f"{name}.{e}.{proj}.weight": (e, role) for e in range(experts)
                 for proj, role in ((gate, "gate"), (up, "up"), (down, "down"))}
        if all(n in header for n in names):
            return names
    raise PackedModelUnsupported(f"{name}: the checkpoint does not hold its {experts} experts as "
                                 f"per-expert packed Linears ({name}.<e>.gate_proj.weight or .w1.weight)")


def _load_tensors(model: nn.Module, checkpoint: Path, header: dict[str, _Stored], sites: list[_ExpertsSite],
                  device: torch.device) -> set[str]:
    """Copy every checkpoint tensor the model has a place for; returns the model names filled."""
    from safetensors import safe_open

    targets = dict(model.state_dict(keep_vars=True))
    expert_of = {w: (site, expert, role) for site in sites for w, (expert, role) in site.names.items()}
    loaded: set[str] = set()
    skipped = 0
    with ExitStack() as stack:
        shards = {file: stack.enter_context(safe_open(str(checkpoint / file), framework="pt", device=str(device)))
                  for file in sorted({v.file for v in header.values()})}

        def read(name: str) -> torch.Tensor:
            return shards[header[name].file].get_tensor(header[name].key)

        for name, stored in sorted(header.items()):
            if name in expert_of:
                site, expert, role = expert_of[name]
                words, scales = site.module.slots(expert, site.intermediate)[role]
                words.copy_(read(name))
                scale = read(f"{name}_scale")
                if tuple(scale.shape) != tuple(scales.shape):
                    raise PackedModelUnsupported(f"{stored.key}_scale: shape {tuple(scale.shape)}, "
                                                 f"expected {tuple(scales.shape)}")
                scales.copy_(scale)
                loaded.update(f"{site.name}.{b}" for b in ("w13", "s13", "w2", "s2"))
                continue
            if name.endswith(".weight_scale") and name[: -len("_scale")] in expert_of:
                continue
            target = targets.get(name)
            if target is None:
                skipped += 1
                continue
            if stored.dtype == torch.int32 and target.dtype != torch.int32:
                raise PackedModelUnsupported(f"{stored.key} is packed but the model runs it as a BF16 "
                                             "Linear: only routed experts can run packed")
            if stored.shape != tuple(target.shape):
                raise PackedModelUnsupported(f"{stored.key}: checkpoint shape {stored.shape}, "
                                             f"model shape {tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(read(name))
            loaded.add(name)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = sorted(set(targets) - loaded - tied)
    if missing:
        raise PackedModelUnsupported(f"the checkpoint lacks {len(missing)} tensor(s) the model needs, "
                                     f"e.g. {', '.join(missing[:3])} (renamed by a conversion this loader does not apply)")
    if skipped:
        log.info("packed load: %d checkpoint tensor(s) have no place in %s and were skipped", skipped,
                 type(model).__name__)
    return loaded


def _initialise_the_rest(model: nn.Module, loaded: set[str], sites: list[_ExpertsSite]) -> None:
    """Tie weights and fill the non-persistent buffers (rotary tables) as ``from_pretrained`` does.

    transformers initialises a loaded model's leftovers with ``initialize_weights``, whose init
    functions skip tensors flagged ``_is_hf_initialized``; every loaded tensor is flagged, so only
    the buffers no checkpoint holds are computed.
    """
    for name, tensor in _named_tensors(model):
        if name in loaded:
            tensor._is_hf_initialized = True
    for site in sites:
        site.module._is_hf_initialized = True
    model.tie_weights()
    model.initialize_weights()


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()
