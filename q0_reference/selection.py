"""Choosing the final predictor inside the method: the K snapshots with the largest prior weight.

PR #90 scores every snapshot on a small held-out slice of the training documents (132,000 tokens) at
the end of its cycle, fits mixture weights over all snapshots on those scores once training is over, and
predicts with the K = 256 snapshots of largest weight, their weights renormalised. This module does the
same over the context's fitness windows (held-out training documents, never validation):

- :func:`fitness_slice` takes the first ``tokens // seq_len`` fitness windows (64 windows of 2048
  targets, 131,072 tokens, for 132,000 at the FineWeb window, which is what PR #90 scored);
- :func:`target_logprobs` gives a snapshot's log-probability of every target token there;
- :func:`fit_mixture` fits the weights w that minimise the mixture's mean negative log-likelihood
  -mean_t log sum_i w_i p_i(t) by EM. PR #90 runs 300 AdamW steps on softmax logits instead; the
  objective is the same and convex in w, and EM runs until its own optimality gap (max_i s_i - 1, with
  s_i the mean responsibility ratio, bounds the distance to the optimum) is below ``tol``;
- :func:`top_k_weights` keeps the K largest weights (ties to the earlier snapshot) and renormalises.

With ``final_top_k = 0`` the recipes leave the choice to the harness's learned prior over all snapshots.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from q0_reference.errors import Q0ConfigError


def fitness_slice(windows: torch.Tensor, tokens: int, seq_len: int) -> torch.Tensor:
    """The first ``tokens // seq_len`` windows ([n, seq_len + 1]) of the fitness windows."""
    if tokens < seq_len:
        raise Q0ConfigError(f"fitness_tokens ({tokens}) must cover at least one window of {seq_len} tokens")
    n = tokens // seq_len
    if windows.size(0) < n:
        raise Q0ConfigError(f"fitness_tokens = {tokens} needs {n} windows of {seq_len} tokens but the track "
                            f"carves only {windows.size(0)}; lower fitness_tokens")
    return windows[:n]


@torch.no_grad()
def target_logprobs(model: torch.nn.Module, windows: torch.Tensor, *, batch_size: int = 4, to_device=lambda t: t,
                    autocast=None) -> torch.Tensor:
    """log p(target) for every target of ``windows`` under ``model`` in eval mode, float32 on the CPU."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, windows.size(0), batch_size):
            chunk = to_device(windows[start:start + batch_size])
            inputs, targets = chunk[:, :-1], chunk[:, 1:]
            if autocast is not None:
                with autocast():
                    logits = model(inputs)
            else:
                logits = model(inputs)
            logp = F.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
            out.append(logp.reshape(-1).to("cpu", torch.float32))
    finally:
        model.train(was_training)
    return torch.cat(out)


def fit_mixture(logps: torch.Tensor, *, tol: float = 1e-6, max_iterations: int = 10_000) -> torch.Tensor:
    """Mixture weights [M] minimising -mean_t log sum_i w_i exp(logps[i, t]), by EM (float64)."""
    if logps.dim() != 2 or logps.size(0) < 1 or logps.size(1) < 1:
        raise Q0ConfigError(f"fit_mixture needs a [members, tokens] matrix, got shape {tuple(logps.shape)}")
    logp = logps.double()
    m = logp.size(0)
    log_w = torch.full((m,), -math.log(m), dtype=torch.float64)
    for _ in range(max_iterations):
        log_mix = torch.logsumexp(log_w[:, None] + logp, dim=0)
        ratio = torch.exp(logp - log_mix).mean(dim=1)  # s_i; sum_i w_i s_i = 1
        if ratio.max().item() - 1.0 <= tol:
            break
        log_w = log_w + torch.log(ratio)
        log_w = log_w - torch.logsumexp(log_w, dim=0)
    return torch.exp(log_w)


def top_k_weights(weights: torch.Tensor, k: int) -> torch.Tensor:
    """The K largest weights renormalised to sum 1, zero elsewhere; ties go to the earlier member."""
    if k < 1:
        raise Q0ConfigError(f"top-K selection needs K >= 1, got {k}")
    w = weights.double()
    order = sorted(range(w.numel()), key=lambda i: (-w[i].item(), i))[:k]
    kept = torch.zeros_like(w)
    kept[order] = w[order]
    total = kept.sum()
    if not total > 0:
        kept[order] = 1.0
        total = kept.sum()
    return kept / total


def select_top_k(logps: Mapping[str, torch.Tensor], k: int) -> dict[str, float]:
    """{tag: weight} of the K snapshots of largest fitted weight, for ``ctx.set_ensemble``."""
    tags: Sequence[str] = sorted(logps)
    if not tags:
        raise Q0ConfigError("no snapshot was scored on the fitness windows; nothing to select from")
    matrix = torch.stack([logps[t].double() for t in tags])
    weights = top_k_weights(fit_mixture(matrix), min(k, len(tags)))
    return {tag: float(w) for tag, w in zip(tags, weights) if w > 0}
