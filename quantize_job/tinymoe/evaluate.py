"""Held-out perplexity of a causal LM over a token stream (non-overlapping windows)."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    ids: torch.Tensor,
    *,
    seq_len: int = 512,
    batch_size: int = 16,
    max_windows: int | None = None,
    device: torch.device | str | None = None,
) -> float:
    """exp(mean next-token NLL) over consecutive windows of ``seq_len`` tokens of ``ids``.

    Windows do not overlap and every window scores its ``seq_len - 1`` next-token predictions, so
    two models are compared on exactly the same predictions.
    """
    if ids.dim() != 1:
        raise ValueError("ids must be a 1-D token stream")
    n_windows = ids.numel() // seq_len
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows == 0:
        raise ValueError(f"a stream of {ids.numel()} tokens holds no window of {seq_len}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    windows = ids[: n_windows * seq_len].view(n_windows, seq_len)
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    for start in range(0, n_windows, batch_size):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total_nll += float(nll)
        total_tokens += batch[:, 1:].numel()
    model.train(was_training)
    mean = total_nll / total_tokens
    if not math.isfinite(mean):
        raise FloatingPointError("perplexity is not finite: the model produced NaN/Inf logits")
    return math.exp(mean)
