"""Per-token probability mixtures at the scored positions, built one member at a time.

Downstream scores must come from the same predictor whose validation loss the leaderboard shows:
p(y) = sum_i w_i p_i(y) per token, mixed in log space. Members are scored one after another, so memory
holds one model (eight 1.8B members at once would need ~55 GB before any logits); what each member
leaves behind per scored position is small:
- log p_i(target), exact in float64. The mixture's log-probability is a log-sum-exp over members of
  log w_i + log p_i(target), the same number an all-at-once mixture gives.
- its ``top_k`` most likely ids with their probabilities. lm-eval also asks whether the continuation is
  the mixture's greedy choice, and the mixture's argmax need not be any member's. The kept probabilities
  bound the mixture of every other id (an id outside a member's top k has at most that member's k-th
  probability), which settles almost every position; the few they cannot settle are recomputed from
  the full mixed distribution in a second pass over the members (see
  :class:`harness.eval.downstream.lm.MixtureLM`).
Everything runs in float64 on the few scored positions, so mixing adds no rounding of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_TOP_K = 8
_CHUNK = 4096  # positions certified at a time: bounds the [positions, members * k, k] comparison


@dataclass(frozen=True)
class MemberPositions:
    """One member's view of every scored position: exact log p(target), and its top-k ids and probabilities."""

    target_lp: torch.Tensor  # float64 [N]
    top_ids: torch.Tensor  # int64 [N, k], most likely first
    top_p: torch.Tensor  # float64 [N, k]
    complete: bool  # k is the whole vocabulary: no id lies outside top_ids


def member_positions(logits: torch.Tensor, targets: torch.Tensor, top_k: int = DEFAULT_TOP_K) -> MemberPositions:
    """:class:`MemberPositions` of one member's logits [N, V] at the scored positions."""
    log_p = torch.log_softmax(logits.to(torch.float64), dim=-1)
    k = min(top_k, log_p.shape[-1])
    top = log_p.topk(k, dim=-1)
    return MemberPositions(log_p.gather(1, targets[:, None]).squeeze(1), top.indices, top.values.exp(),
                           k == log_p.shape[-1])


def concat_positions(parts: list[MemberPositions]) -> MemberPositions:
    return MemberPositions(torch.cat([p.target_lp for p in parts]), torch.cat([p.top_ids for p in parts]),
                           torch.cat([p.top_p for p in parts]), all(p.complete for p in parts))


def mix_target_logprobs(member_target_lp: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """log sum_i w_i p_i(target) per position from log p_i(target) [M, N] and log w_i [M]; one member
    (log w = 0) is returned exactly."""
    if member_target_lp.shape[0] != log_weights.numel():
        raise ValueError(f"{member_target_lp.shape[0]} members but {log_weights.numel()} weights")
    if member_target_lp.shape[0] == 1:
        return member_target_lp[0].clone()
    return torch.logsumexp(member_target_lp + log_weights.to(torch.float64)[:, None], dim=0)


def settle_greedy(members: list[MemberPositions], log_weights: torch.Tensor,
                  targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether each target is the mixture's argmax, as far as the members' top-k can tell.

    Returns ``(greedy, unsettled)``, both bool [N]: where ``unsettled`` is True, ``greedy`` means nothing and
    the full mixed distribution must decide. An id is certainly above the target when its known mass
    alone exceeds the target's, and the target is certainly the argmax when every other id's largest
    possible mass (each member's k-th probability standing in for an unknown one) is below it; a tie is
    left unsettled, as the exact argmax breaks ties by id.
    """
    weights = log_weights.to(torch.float64).exp()
    greedy, unsettled = [], []
    for start in range(0, targets.numel(), _CHUNK):
        part = slice(start, start + _CHUNK)
        y = targets[part]
        p_target = sum(w * m.target_lp[part].exp() for w, m in zip(weights, members))
        candidates = torch.cat([m.top_ids[part] for m in members], dim=1)  # [n, M*k]
        lower = torch.zeros(candidates.shape, dtype=torch.float64)
        upper = torch.zeros(candidates.shape, dtype=torch.float64)
        outside = torch.zeros(y.shape, dtype=torch.float64)  # the most any id in no member's top-k can have
        for w, m in zip(weights, members):
            ids, probs = m.top_ids[part], m.top_p[part]
            # An id outside the top k has at most the k-th probability, and at most the mass the top k leave.
            bound = (torch.zeros_like(probs[:, -1]) if m.complete
                     else torch.minimum(probs[:, -1], (1.0 - probs.sum(dim=-1)).clamp_min(0.0) + 1e-12))
            match = candidates[:, :, None] == ids[:, None, :]  # [n, M*k, k]
            known = match.any(dim=-1)
            value = (match * probs[:, None, :]).sum(dim=-1)
            lower += w * torch.where(known, value, torch.zeros_like(value))
            upper += w * torch.where(known, value, bound[:, None].expand_as(value))
            outside += w * bound
        others = candidates != y[:, None]
        beaten = ((lower > p_target[:, None]) & others).any(dim=1)
        clear = (((upper < p_target[:, None]) | ~others).all(dim=1)) & (outside < p_target)
        greedy.append(clear)
        unsettled.append(~beaten & ~clear)
    if not greedy:
        empty = torch.zeros(0, dtype=torch.bool)
        return empty, empty
    return torch.cat(greedy), torch.cat(unsettled)


def add_member_probs(mixed: torch.Tensor | None, logits: torch.Tensor, log_weight: float) -> torch.Tensor:
    """mixed + w_i p_i over the whole vocabulary at some positions ([n, V] float64), for the positions the
    top-k could not settle."""
    term = torch.softmax(logits.to(torch.float64), dim=-1).mul_(float(torch.tensor(log_weight).exp()))
    return term if mixed is None else mixed.add_(term)


def score_continuations(target_lp: torch.Tensor, greedy: torch.Tensor, owner: torch.Tensor,
                        n_requests: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of target log-probabilities per request, and whether every target was the argmax.

    The arguments cover the scored positions of all requests, ``owner`` [N] naming the request each
    position belongs to.
    """
    totals = torch.zeros(n_requests, dtype=torch.float64).index_add_(0, owner, target_lp)
    misses = (~greedy).to(torch.int64)
    all_greedy = torch.zeros(n_requests, dtype=torch.int64).index_add_(0, owner, misses) == 0
    return totals, all_greedy
