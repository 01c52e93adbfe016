"""Grouped MoE dequant-GEMM over packed expert weights ``[E, N, K*bits/32]`` with top-k routing.

Routing is turned into the usual "sorted token" layout (vLLM's ``moe_align_block_size``): the
``M * top_k`` (token, expert) pairs are sorted by expert, each expert's run is padded to a
multiple of ``block_m`` with the sentinel ``M * top_k``, and every ``block_m`` slice gets its
expert id. Experts with no tokens get no block. Everything is built with torch ops on the device
and without a host synchronisation, so it can sit inside a CUDA graph; the number of blocks is
bounded on the host by ``ceil(pairs / block_m) + min(pairs, E)`` and surplus programs exit.

The GEMM itself is :func:`dedicated.kernels.gemm.dq_gemm_kernel`. Gate/up reads activation row
``pair // top_k`` (``x`` is ``[M, K]``); down reads row ``pair`` (``x`` is ``[M * top_k, K]``) and
can multiply each output row by its routing weight, so the final MoE output is a plain sum over
the top-k rows (:func:`fused_moe`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton

from dedicated.kernels.dequant import resolve_offset
from dedicated.kernels.gemm import launch
from dedicated.kernels.gemm_config import GemmConfig, resolve_config
from dedicated.kernels.gemm_operands import check_activations, check_gemm_weights, prepare_activations, weight_strides
from dedicated.kernels.pair_order import PAIR_TILE_K


@dataclass(frozen=True)
class MoERouting:
    """Sorted-token layout for one routing decision and one ``block_m``."""

    sorted_ids: torch.Tensor  # int32 [max_blocks * block_m]; sentinel num_pairs for padding
    expert_ids: torch.Tensor  # int32 [max_blocks]; expert of each block (unused blocks: E - 1)
    num_padded: torch.Tensor  # int32 [1]; padded length actually used
    num_tokens: int
    top_k: int
    num_experts: int
    block_m: int

    @property
    def num_pairs(self) -> int:
        return self.num_tokens * self.top_k

    @property
    def max_blocks(self) -> int:
        return int(self.expert_ids.shape[0])


def max_blocks(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Host-side bound on the number of ``block_m`` blocks, so no device->host sync is needed."""
    return triton.cdiv(num_pairs, block_m) + min(num_pairs, num_experts)


@dataclass(frozen=True)
class ExpertOrder:
    """The (token, expert) pairs of one routing sorted by expert: what every ``block_m`` shares.

    ``fused_moe``'s two GEMMs may want different ``block_m``; sorting once (the costliest part of
    the alignment on a GPU: a radix sort) serves both.
    """

    order: torch.Tensor  # int64 [pairs]: pair indices sorted by expert (stable)
    sorted_experts: torch.Tensor  # int64 [pairs]: their experts
    counts: torch.Tensor  # int64 [E]: pairs per expert
    count_starts: torch.Tensor  # int64 [E]: first sorted position of each expert
    num_tokens: int
    top_k: int
    num_experts: int


def expert_order(topk_ids: torch.Tensor, num_experts: int) -> ExpertOrder:
    """Sort ``M * top_k`` (token, expert) pairs by expert, once per routing decision."""
    if topk_ids.dim() != 2:
        raise ValueError(f"topk_ids must be [M, top_k], got {tuple(topk_ids.shape)}")
    if topk_ids.dtype.is_floating_point:
        raise TypeError("topk_ids must be an integer tensor")
    m, top_k = topk_ids.shape
    flat = topk_ids.reshape(-1)
    if flat.numel() and not torch.compiler.is_compiling() and flat.device.type == "cpu":
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= num_experts:
            raise ValueError(f"expert ids must lie in [0, {num_experts}), got [{lo}, {hi}]")
    # 32-bit keys: half the radix passes of int64 ones on a GPU (expert ids are small)
    sorted_experts, order = torch.sort(flat.to(torch.int32), stable=True)
    counts = torch.bincount(flat, minlength=num_experts)[:num_experts]
    return ExpertOrder(order=order, sorted_experts=sorted_experts.to(torch.int64), counts=counts,
                       count_starts=torch.cumsum(counts, 0) - counts, num_tokens=m, top_k=top_k,
                       num_experts=num_experts)


def align_to_blocks(sorted_pairs: ExpertOrder, block_m: int) -> MoERouting:
    """Pad each expert's sorted pairs to a multiple of ``block_m``: one GEMM's routing layout."""
    if block_m <= 0:
        raise ValueError(f"block_m must be positive, got {block_m}")
    so, num_experts = sorted_pairs, sorted_pairs.num_experts
    pairs = so.order.numel()
    device = so.order.device
    nb = max_blocks(pairs, num_experts, block_m)
    padded = (so.counts + block_m - 1) // block_m * block_m
    ends = torch.cumsum(padded, 0)
    starts = ends - padded
    rank = torch.arange(pairs, device=device) - so.count_starts[so.sorted_experts]
    position = starts[so.sorted_experts] + rank
    sorted_ids = torch.full((nb * block_m,), pairs, dtype=torch.int32, device=device)
    sorted_ids[position] = so.order.to(torch.int32)
    block_starts = torch.arange(nb, device=device, dtype=torch.int64) * block_m
    expert_ids = torch.searchsorted(ends, block_starts, right=True).clamp_(max=num_experts - 1)
    num_padded = ends[-1:].to(torch.int32) if num_experts else torch.zeros(1, dtype=torch.int32, device=device)
    return MoERouting(
        sorted_ids=sorted_ids,
        expert_ids=expert_ids.to(torch.int32),
        num_padded=num_padded,
        num_tokens=so.num_tokens,
        top_k=so.top_k,
        num_experts=num_experts,
        block_m=block_m,
    )


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> MoERouting:
    """Sort ``M * top_k`` (token, expert) pairs by expert and pad each expert to ``block_m``."""
    if block_m <= 0:
        raise ValueError(f"block_m must be positive, got {block_m}")
    return align_to_blocks(expert_order(topk_ids, num_experts), block_m)


def default_moe_config(num_tokens: int, top_k: int, num_experts: int, n: int, k: int, bits: int,
                       pair_ordered: bool = False, tile_major: bool = False,
                       pair_tile_k: int = PAIR_TILE_K) -> GemmConfig:
    """Config by average tokens per expert and weight layout (tuned on an H100; see
    docs/benchmarks-kernels.md)."""
    from dedicated.kernels.configs import moe_config

    return moe_config(num_tokens * top_k / max(num_experts, 1), n, k, bits, pair_ordered, tile_major, pair_tile_k)


def moe_gemm(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    routing: MoERouting,
    bits: int,
    group_size: int = 128,
    offset: int | None = None,
    topk_weights: torch.Tensor | None = None,
    config: GemmConfig | None = None,
    out: torch.Tensor | None = None,
    pair_ordered: bool = False,
    pair_tile_k: int = PAIR_TILE_K,
) -> torch.Tensor:
    """Per (token, expert) pair: ``x_row @ dequantize(W[expert]).T``, output ``[M * top_k, N]``.

    ``x`` is ``[M, K]`` (each token feeds its ``top_k`` experts: gate/up) or ``[M * top_k, K]``
    (one row per pair: down). ``topk_weights`` ``[M, top_k]``, if given, scales each output row by
    its routing weight. ``config.block_m`` must equal ``routing.block_m``. ``pair_ordered``: the
    weights are in the layout of :func:`dedicated.kernels.pair_order.to_pair_order`, built over
    ``pair_tile_k``-wide K tiles.
    """
    n, k, tiled = check_gemm_weights(packed, scales, bits, group_size, experts=True, pair_ordered=pair_ordered,
                                     pair_tile_k=pair_tile_k)
    check_activations(x, k, packed)
    off = resolve_offset(bits, offset)
    e = packed.shape[0]
    if routing.num_experts != e:
        raise ValueError(f"routing was built for {routing.num_experts} experts, weights hold {e}")
    pairs = routing.num_pairs
    if x.shape[0] == routing.num_tokens:
        row_div = routing.top_k
    elif x.shape[0] == pairs:
        row_div = 1
    else:
        raise ValueError(
            f"activations have {x.shape[0]} rows; expected {routing.num_tokens} (tokens) or {pairs} (pairs)"
        )
    cfg = resolve_config(config or GemmConfig(block_m=routing.block_m), group_size, bits, pair_ordered, pair_tile_k)
    if cfg.block_m != routing.block_m:
        raise ValueError(f"config.block_m={cfg.block_m} but routing was aligned to {routing.block_m}")
    if topk_weights is not None:
        if tuple(topk_weights.shape) != (routing.num_tokens, routing.top_k):
            raise ValueError(f"topk_weights must be {(routing.num_tokens, routing.top_k)}, got {tuple(topk_weights.shape)}")
        topk_weights = topk_weights.contiguous()
    if out is None:
        out = torch.empty((pairs, n), dtype=x.dtype, device=x.device)
    if pairs == 0 or n == 0:
        return out
    x = prepare_activations(x, cfg, bits)
    num_pid_m = routing.max_blocks
    rw = topk_weights if topk_weights is not None else x
    launch(cfg, x, packed, scales, out, rw, routing.sorted_ids, routing.expert_ids, routing.num_padded,
           routing.num_tokens, n, k, pairs, num_pid_m, (packed.stride(0), *weight_strides(packed, tiled)),
           scales.stride(), bits, group_size, off,
           is_moe=True, row_div=row_div, mul_routed=topk_weights is not None, pair_ordered=pair_ordered,
           w_tiled=tiled)
    return out


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU on the fused gate/up output ``[rows, 2 * I]`` (gate first, as in the checkpoints)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate.float()) * up.float()).to(gate_up.dtype)


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    s13: torch.Tensor,
    w2: torch.Tensor,
    s2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    bits: int,
    group_size: int = 128,
    offset: int | None = None,
    gate_up_config: GemmConfig | None = None,
    down_config: GemmConfig | None = None,
    pair_ordered: bool = False,
    pair_tile_k: int = PAIR_TILE_K,
    down_pair_tile_k: int | None = None,
    activation: Callable[[torch.Tensor], torch.Tensor] = silu_and_mul,
) -> torch.Tensor:
    """A whole routed-expert MLP: gate/up GEMM, SwiGLU, down GEMM times routing weight, sum.

    ``activation`` maps the gate/up output ``[rows, 2 * I]`` to ``[rows, I]``; SwiGLU by default, a
    model's own gate (for example a transformers experts module's ``_apply_gate``) where it differs.

    Pair-ordered weights: each GEMM's layout may differ (``configs.preferred_layout``): row-major or
    K-tile-major is read from each tensor's rank, the K tile is ``pair_tile_k`` for gate/up and
    ``down_pair_tile_k`` (default: the same) for down.
    """
    down_tile = pair_tile_k if down_pair_tile_k is None else down_pair_tile_k
    m, top_k = topk_ids.shape
    e = w13.shape[0]
    n13 = w13.shape[-2]  # [E, N, K*bits/32] or K-tile-major [E, K/128, N, 128*bits/32]
    k = x.shape[1]
    cfg13 = gate_up_config or default_moe_config(m, top_k, e, n13, k, bits, pair_ordered, w13.dim() == 4, pair_tile_k)
    cfg2 = down_config or default_moe_config(m, top_k, e, w2.shape[-2], n13 // 2, bits, pair_ordered, w2.dim() == 4,
                                             down_tile)
    pairs_by_expert = expert_order(topk_ids, e)
    r13 = align_to_blocks(pairs_by_expert, cfg13.block_m)
    r2 = r13 if cfg2.block_m == cfg13.block_m else align_to_blocks(pairs_by_expert, cfg2.block_m)
    h = moe_gemm(x, w13, s13, r13, bits, group_size, offset, config=cfg13, pair_ordered=pair_ordered,
                 pair_tile_k=pair_tile_k)
    a = activation(h)
    y = moe_gemm(a, w2, s2, r2, bits, group_size, offset, topk_weights=topk_weights, config=cfg2,
                 pair_ordered=pair_ordered, pair_tile_k=down_tile)
    return y.view(m, top_k, y.shape[-1]).sum(dim=1, dtype=torch.float32).to(x.dtype)
