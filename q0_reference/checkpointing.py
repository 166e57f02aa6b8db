"""When to checkpoint, who writes what, and how a group of ranks gets its state back on resume.

Policy. A recipe offers a checkpoint at natural points (q0: every cycle end; the single model: every
snapshot) and takes it at every ``every``-th offer (0: never by count) or at the first offer once
``minutes`` have passed since the last one (0: no clock). A checkpoint is also always taken when a
trajectory or member ends, because that is where the record of finished work changes. A 1.8B model's
state is about 15 GB, so writing it at each 2-epoch cycle costs more disk traffic than the minutes of
training it protects; a resumed run restarts from the last checkpoint and retrains what came after it,
with identical results.

Writers. The ranks of a DDP group hold identical weights and optimizer state (gradients are all-reduced;
:class:`q0_reference.muon.BatchedMuon` keeps its momentum replicated), so only the group's leader writes
them. ``ctx.checkpoint`` is per rank and also saves the rank's RNG states, and the harness keeps each
rank's stream position beside it, so every other rank still checkpoints, but only the small part that is
its own: where it is in the schedule and that the leader holds the rest. On resume the leader reads the
weights and optimizer state and broadcasts them to its group (:func:`share_from_leader`). The clock
decision is the leader's too and is broadcast, so a group never disagrees about checkpointing.

The teacher is not stored at a cycle end: q0 checkpoints there before the weights are perturbed, so the
teacher for the next cycle is the checkpointed model itself and is re-derived from it on resume (then the
perturbation is applied again with the checkpointed generator, giving the same weights as the run that
never stopped).

On request. The harness asks for a checkpoint when the scheduler warns that it will stop the job
(``ctx.checkpoint_requested``); the recipes then checkpoint after the step they are at, mid-cycle or
mid-epoch, instead of losing the work since their last natural point. Mid-cycle the teacher is no longer
the model, so such a checkpoint carries the teacher's weights too (twice the weights, once per warning).
Every rank of a DDP group sees the request at the same step (the data server picks it), so the group
checkpoints together without a collective of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from q0_reference.errors import Q0ConfigError


@dataclass(frozen=True)
class CheckpointPolicy:
    every: int = 1
    minutes: float = 0.0

    def __post_init__(self):
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 0:
            raise Q0ConfigError(f"checkpoint_every must be an integer >= 0, got {self.every!r}")
        if not self.minutes >= 0:
            raise Q0ConfigError(f"checkpoint_minutes must be >= 0, got {self.minutes!r}")

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> "CheckpointPolicy":
        return cls(every=int(hp.get("checkpoint_every", 1)), minutes=float(hp.get("checkpoint_minutes", 0.0)))


class CheckpointClock:
    """Counts checkpoint offers and time since the last checkpoint; ``due()`` answers for a whole group."""

    def __init__(self, policy: CheckpointPolicy, placement=None, clock=time.monotonic):
        self.policy = policy
        self.placement = placement
        self._clock = clock
        self._offers = 0
        self._last = clock()

    def due(self) -> bool:
        """Whether to checkpoint at this offer (a collective inside a DDP group when the clock is on)."""
        self._offers += 1
        by_count = self.policy.every > 0 and self._offers % self.policy.every == 0
        by_time = self.policy.minutes > 0 and (self._clock() - self._last) >= 60.0 * self.policy.minutes
        decision = by_count or by_time
        if self.policy.minutes > 0 and self.placement is not None and self.placement.distributed:
            decision = _broadcast_flag(decision, self.placement)
        return decision

    def taken(self) -> None:
        self._last = self._clock()


def _broadcast_flag(flag: bool, placement) -> bool:
    import torch.distributed as dist

    box = [bool(flag)]
    dist.broadcast_object_list(box, src=placement.leader_rank, group=placement.process_group,
                               device=_comm_device(placement))
    return bool(box[0])


def requested(ctx) -> bool:
    """The harness asks for a checkpoint now (``ctx.checkpoint_requested``); a context without the property
    (an older harness, a test's stand-in) never asks."""
    return bool(getattr(ctx, "checkpoint_requested", False))


def to_cpu(value):
    """A copy of a (nested) state with every tensor on the CPU: a checkpoint then loads on any device.
    Meta tensors (a dry run) have no data to copy and stay as they are."""
    if isinstance(value, torch.Tensor):
        return value.detach() if value.is_meta else value.detach().to("cpu", copy=True)
    if isinstance(value, Mapping):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def write(ctx, placement, light: Mapping[str, Any], shared: Mapping[str, Any]) -> None:
    """Checkpoint this rank: the leader writes ``light`` and ``shared`` (weights, optimizer state), the
    other ranks of its group only ``light`` and a note that the leader holds the rest."""
    if placement is None or placement.is_leader:
        ctx.checkpoint({**light, **to_cpu(dict(shared)), "shared_by_leader": False})
    else:
        ctx.checkpoint({**light, "shared_by_leader": True})


@dataclass(frozen=True)
class _Slot:
    shape: tuple[int, ...]
    dtype: torch.dtype


def _comm_device(placement) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(placement.process_group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def share_from_leader(state: Mapping[str, Any] | None, keys: tuple[str, ...], placement) -> dict[str, Any]:
    """The leader's ``state[key]`` for each key, on every rank of its group (CPU tensors).

    The leader first broadcasts the layout (nesting, shapes, dtypes; small), then every tensor in turn,
    so no rank ever pickles gigabytes of weights. Outside a distributed group it returns the local values."""
    if placement is None or not placement.distributed:
        return {k: state[k] for k in keys}
    import torch.distributed as dist

    tensors: list[torch.Tensor] = []

    def strip(value):
        if isinstance(value, torch.Tensor):
            tensors.append(value)
            return _Slot(tuple(value.shape), value.dtype)
        if isinstance(value, Mapping):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(strip(v) for v in value)
        return value

    device = _comm_device(placement)
    layout = [strip({k: state[k] for k in keys}) if placement.is_leader else None]
    dist.broadcast_object_list(layout, src=placement.leader_rank, group=placement.process_group, device=device)
    received = iter(tensors)

    def fill(value):
        if isinstance(value, _Slot):
            if placement.is_leader:
                tensor = next(received).to(device)
            else:
                tensor = torch.empty(value.shape, dtype=value.dtype, device=device)
            dist.broadcast(tensor, src=placement.leader_rank, group=placement.process_group)
            return tensor.to("cpu")
        if isinstance(value, Mapping):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(fill(v) for v in value)
        return value

    return fill(layout[0])
