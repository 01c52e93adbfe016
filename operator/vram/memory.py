"""Per-GPU memory arithmetic: KV cache, recurrent state, runtime overhead, usable memory.

Every constant here is an estimate for vLLM (V1 engine) on NVIDIA GPUs, stated with its reason;
the planner adds them up and compares the sum with what ``--gpu-memory-utilization`` lets vLLM use.
vLLM itself measures the real figures at start-up and gives whatever is left to the KV cache, so
these constants only need to be on the safe side of reality, not exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from .facts import FULL, LINEAR, SLIDING, ModelFacts

GIB = 1024**3

#: KV cache element size: the model's 16-bit dtype (the planner never sets --kv-cache-dtype fp8).
KV_DTYPE_BYTES = 2
#: Gated DeltaNet conv and SSM state element size: vLLM's default mamba cache dtype ("auto") is the
#: model dtype, bf16.
STATE_DTYPE_BYTES = 2

#: CUDA context, cuBLAS/cuBLASLt workspaces and allocator slack that vLLM's profiler counts as
#: "non-torch memory". An estimate on the safe side, not a measurement of ours; vLLM measures the
#: real figure at start-up.
CUDA_CONTEXT_GIB = 0.75
#: NCCL communicators and vLLM's custom all-reduce buffers, per GPU, only with TP > 1.
TP_COMMUNICATION_GIB = 0.5
#: CUDA graph pools for the default capture sizes (up to 512 sequences): an estimate.
CUDA_GRAPH_GIB = 0.75
#: Extra CUDA graphs and buffers of the MTP drafter.
MTP_RUNTIME_GIB = 0.25
#: Encoder profiling with the largest image plus the encoder cache, per GPU, when vision is loaded.
VISION_RUNTIME_GIB = 1.0

#: Tokens per scheduler step; passed as --max-num-batched-tokens so the activation estimate holds.
MAX_NUM_BATCHED_TOKENS = 8192
#: Activation bytes per batched token per hidden unit in 16 bits: residual stream, norms, QKV,
#: attention output and their temporaries (about 8 live hidden-sized tensors of 2 bytes).
ACTIVATION_HIDDEN_FACTOR = 16

#: vLLM's own default for discrete GPUs.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
#: Unified-memory GPUs (GB10 / DGX Spark) share DRAM with the CPU: keep this much for the OS,
#: kubelet, the container's CPU side (API server, tokenizer, page cache while loading weights).
UNIFIED_HOST_RESERVE_GIB = 24.0


@dataclass(frozen=True)
class KvShape:
    """KV and recurrent-state sizes per GPU for a given tensor-parallel size."""

    full_bytes_per_token: int  # every full-attention layer (plus MTP layers when on)
    sliding_bytes_per_token: int  # sliding-window layers; capped at the window per sequence
    sliding_window: int | None
    state_bytes_per_sequence: int  # linear-attention (Gated DeltaNet) conv + SSM state

    def bytes_for(self, context: int, sequences: int) -> int:
        sliding_tokens = min(context, self.sliding_window or context)
        per_seq = (context * self.full_bytes_per_token + sliding_tokens * self.sliding_bytes_per_token
                   + self.state_bytes_per_sequence)
        return per_seq * sequences


def kv_heads_per_gpu(facts: ModelFacts, tp: int) -> int:
    """KV heads each GPU holds: sharded while they divide, replicated (one each) beyond."""
    return max(1, facts.num_kv_heads // tp)


def kv_shape(facts: ModelFacts, tp: int, mtp: bool) -> KvShape:
    per_layer = 2 * kv_heads_per_gpu(facts, tp) * facts.head_dim * KV_DTYPE_BYTES  # K and V
    full_layers = facts.count(FULL) + (facts.mtp_layers if mtp else 0)
    state = 0
    if facts.linear is not None:
        lin = facts.linear
        conv = (lin.conv_kernel - 1) * (lin.conv_dim // tp) * STATE_DTYPE_BYTES
        ssm = (lin.num_value_heads // tp) * lin.key_head_dim * lin.value_head_dim * STATE_DTYPE_BYTES
        state = facts.count(LINEAR) * (conv + ssm)
    return KvShape(
        full_bytes_per_token=full_layers * per_layer,
        sliding_bytes_per_token=facts.count(SLIDING) * per_layer,
        sliding_window=facts.sliding_window,
        state_bytes_per_sequence=state,
    )


def activation_bytes(facts: ModelFacts, tp: int, max_num_seqs: int) -> int:
    """Peak activation memory of vLLM's profiling step with MAX_NUM_BATCHED_TOKENS tokens.

    Hidden-sized temporaries are not sharded; the MLP's are (per GPU); fused-MoE keeps gate/up,
    activation and down outputs for every routed token; the sampler holds fp32 logits and
    probabilities for each sequence.
    """
    tokens = MAX_NUM_BATCHED_TOKENS
    hidden = tokens * facts.hidden_size * ACTIVATION_HIDDEN_FACTOR
    if facts.moe is not None:
        n = facts.moe.intermediate_size // tp
        mlp = tokens * facts.moe.experts_per_token * (3 * n + facts.hidden_size) * 2
    else:
        mlp = tokens * 3 * ((facts.intermediate_size or 0) // tp) * 2
    sampler = max_num_seqs * facts.vocab_size * 4 * 2
    return hidden + mlp + sampler


def runtime_bytes(facts: ModelFacts, tp: int, max_num_seqs: int, *, vision: bool, mtp: bool) -> int:
    gib = CUDA_CONTEXT_GIB + CUDA_GRAPH_GIB
    if tp > 1:
        gib += TP_COMMUNICATION_GIB
    if vision:
        gib += VISION_RUNTIME_GIB
    if mtp:
        gib += MTP_RUNTIME_GIB
    return int(gib * GIB) + activation_bytes(facts, tp, max_num_seqs)


def default_utilization(memory_gib: float, unified: bool) -> float:
    """``--gpu-memory-utilization`` for a pool: vLLM's 0.90, or what unified memory can spare."""
    if not unified:
        return DEFAULT_GPU_MEMORY_UTILIZATION
    spare = (memory_gib - UNIFIED_HOST_RESERVE_GIB) / memory_gib
    return max(0.0, min(DEFAULT_GPU_MEMORY_UTILIZATION, int(spare * 100) / 100))
