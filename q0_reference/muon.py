"""Muon for the hidden matrices, batched over matrices of one shape and shared out over a DDP group.

The update is torch.optim.Muon's (Keller Jordan's Muon). For a matrix W with gradient G:

    B <- B + (1 - mu) (G - B)                       momentum (a lerp)
    U <- G + mu (B - G)  (Nesterov)  or  U <- B
    O <- NS_5(U)                                     five quintic Newton-Schulz steps in bf16 on U/||U||_F,
                                                     on the transpose when W is taller than wide
    W <- W (1 - lr wd) - lr sqrt(max(1, rows/cols)) O

Only the layout of the work differs, for speed:

- Matrices of one shape are stacked and orthogonalised together with batched matrix products: one kernel
  per Newton-Schulz step for all 30 query projections of a 30-layer model instead of 30 small ones.
- With a process group (the ranks of a DDP group, which hold identical all-reduced gradients), each rank
  orthogonalises a contiguous share of every stack and the shares are all-gathered, so the Newton-Schulz
  work, nearly all of Muon's cost, is divided by the group size. The momentum update is elementwise and
  cheap, so every rank applies it to every matrix: the optimizer state stays identical on all ranks of the
  group, which lets one rank checkpoint it for all. slowrun's own fused Muon goes one step further and
  reduce-scatters the gradients so each rank keeps only its share of the momentum (ZeRO-2 style); here
  DDP has already all-reduced the gradients, and a replicated momentum (4 bytes per matrix weight) buys
  checkpoints written by one rank per group. The gathered updates travel in bf16 over NCCL (exactly the
  values computed) and in float32 over gloo, which has no bf16 all-gather; the cast is exact both ways.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

try:  # the defaults torch.optim.Muon documents; kept here so the maths does not depend on private names
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C
except ImportError:  # pragma: no cover
    DEFAULT_A, DEFAULT_B, DEFAULT_C = 3.4445, -4.7750, 2.0315


def newton_schulz(updates: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                  coefficients: tuple[float, float, float] = (DEFAULT_A, DEFAULT_B, DEFAULT_C)) -> torch.Tensor:
    """Approximately orthogonalise each matrix of a stack [k, rows, cols] in bf16 (returns bf16)."""
    a, b, c = coefficients
    x = updates.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a)
    return x.mT if tall else x


def _shape_buckets(params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    buckets: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for p in params:
        buckets.setdefault(tuple(p.shape), []).append(p)
    return list(buckets.values())


class BatchedMuon(torch.optim.Muon):
    """``torch.optim.Muon`` with the step batched by shape and, given ``process_group``, the
    orthogonalisation divided among that group's ranks. State (``momentum_buffer`` per parameter) and
    hyperparameters are torch's, so state dicts and schedules treat both alike."""

    def __init__(self, params, *args, process_group=None, **kwargs):
        super().__init__(params, *args, **kwargs)
        self.process_group = process_group

    def _group_layout(self) -> tuple[int, int]:
        if self.process_group is None or not dist.is_available() or not dist.is_initialized():
            return 0, 1
        return dist.get_rank(self.process_group), dist.get_world_size(self.process_group)

    def _orthogonalise(self, updates: list[torch.Tensor], group: dict) -> torch.Tensor:
        stack = torch.stack(updates)
        rank, size = self._group_layout()
        kwargs = dict(steps=group["ns_steps"], eps=group["eps"], coefficients=group["ns_coefficients"])
        if size == 1:
            return newton_schulz(stack, **kwargs)
        chunk = -(-stack.size(0) // size)
        mine = stack[rank * chunk: (rank + 1) * chunk]
        wire = torch.bfloat16 if dist.get_backend(self.process_group) == "nccl" else torch.float32
        out = torch.zeros((chunk, *stack.shape[1:]), dtype=wire, device=stack.device)
        if mine.size(0):
            out[: mine.size(0)] = newton_schulz(mine, **kwargs).to(wire)
        shares = [torch.empty_like(out) for _ in range(size)]
        dist.all_gather(shares, out, group=self.process_group)
        return torch.cat(shares)[: stack.size(0)].bfloat16()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for bucket in _shape_buckets(params):
                grads = [p.grad for p in bucket]
                bufs = []
                for p in bucket:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                    bufs.append(state["momentum_buffer"])
                torch._foreach_lerp_(bufs, grads, 1 - momentum)
                updates = [g.lerp(b, momentum) for g, b in zip(grads, bufs)] if group["nesterov"] else bufs
                ortho = self._orthogonalise(updates, group)
                rows, cols = bucket[0].shape[:2]
                adjusted = lr * math.sqrt(max(1.0, rows / cols))
                torch._foreach_mul_(bucket, 1 - lr * wd)
                torch._foreach_add_(bucket, list(ortho.unbind(0)), alpha=-adjusted)
        return loss
