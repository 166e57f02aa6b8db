"""Per-token probability mixtures at the scored positions of a batch.

Downstream scores must come from the same predictor whose validation loss the leaderboard shows:
p(y) = sum_i w_i p_i(y), mixed in log space. lm-eval also asks whether the continuation is the greedy
choice, and the argmax of a mixture is not the argmax of any member, so the whole next-token
distribution is mixed as well.

The two needs are met separately, which keeps the mixing cost per member constant (an ensemble of K costs
K forward passes and K times the mixing of one, nothing more):
- the target's log-probability is exact in log space: log p_i(y) per member, then a log-sum-exp over the
  K members of a single number each;
- the argmax is taken over the mixed probabilities sum_i w_i p_i(v), each p_i formed with one
  exponential pass. Only ids far below the most likely one can underflow there, and those are never
  the argmax.
Everything runs in float64 on the few scored positions, so mixing adds no rounding of its own.
"""

from __future__ import annotations

from typing import Sequence

import torch


def mixture_scores(member_logits: Sequence[torch.Tensor], log_weights: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) under the mixture (float64 [N]) and the mixture's argmax id ([N]) for logits [N, V].

    ``log_weights`` holds log w_i of the members (weights normalised, none zero). One member is scored
    from its own log-softmax alone, so an ensemble of one is that model exactly.
    """
    if len(member_logits) != log_weights.numel():
        raise ValueError(f"{len(member_logits)} members but {log_weights.numel()} weights")
    index = targets[:, None]
    if len(member_logits) == 1:
        logits = member_logits[0].to(torch.float64)
        target_lp = (logits.gather(1, index) - torch.logsumexp(logits, dim=-1, keepdim=True)).squeeze(1)
        return target_lp, logits.argmax(dim=-1)
    member_target_lp, mixed = [], None
    for logits, log_w in zip(member_logits, log_weights.tolist()):
        logits = logits.to(torch.float64)  # a fresh copy: everything below works in place on it
        peak = logits.max(dim=-1, keepdim=True).values
        target_logit = logits.gather(1, index)
        unnormalised = logits.sub_(peak).exp_()
        log_total = unnormalised.sum(dim=-1, keepdim=True).log_()
        member_target_lp.append((target_logit - peak - log_total).squeeze(1))
        scale = (log_w - log_total).exp_()  # w_i / sum_v exp(logit - peak), per row
        if mixed is None:
            mixed = unnormalised.mul_(scale)
        else:
            mixed.addcmul_(unnormalised, scale)  # += w_i * p_i, fused
    stacked = torch.stack(member_target_lp) + log_weights.to(torch.float64)[:, None]
    return torch.logsumexp(stacked, dim=0), mixed.argmax(dim=-1)


def score_continuations(target_lp: torch.Tensor, argmax: torch.Tensor, targets: torch.Tensor, owner: torch.Tensor,
                        n_requests: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of target log-probabilities per request, and whether every target was the argmax.

    The arguments cover the scored positions of all requests in a batch, ``owner`` [N] naming the
    request each position belongs to.
    """
    totals = torch.zeros(n_requests, dtype=torch.float64).index_add_(0, owner, target_lp)
    misses = (argmax != targets).to(torch.int64)
    greedy = torch.zeros(n_requests, dtype=torch.int64).index_add_(0, owner, misses) == 0
    return totals, greedy
