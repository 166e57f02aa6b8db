"""The global batch of an optimizer step, and the microbatches that reach it.

A recipe's ``batch_size`` is the **global batch**: sequences per optimizer step for one model, whatever
the number of processes training it. Tokens per step are ``batch_size * seq_len``, so the number of steps
in an epoch, the schedules and the snapshots depend on the global batch only, never on the world size or
on how ranks are grouped. A model trained by a group of ``g`` ranks (DDP) reaches that batch by gradient
accumulation: each rank runs ``accumulation`` forward/backward passes over microbatches of
``micro_batch`` sequences, each read from its own shard of the model's stream, so

    global_batch = micro_batch * group_size * accumulation,

and gradients are all-reduced once, after the last microbatch. The arithmetic must come out whole: a
global batch of 256 sequences trains on groups of 1, 2, 4 or 8 ranks with microbatches of 4, but not on
a group of 3; :class:`BatchPlan` refuses such a combination with the numbers that do not divide.

``micro_batch_size = 0`` means "the rank's whole share at once": ``global_batch / group_size`` sequences
in one forward, no accumulation. In one process that is exactly the plain training step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from q0_reference.errors import Q0ConfigError


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Q0ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class BatchPlan:
    """``global_batch`` sequences per optimizer step = ``micro_batch`` per forward x ``group_size`` ranks
    x ``accumulation`` forwards per rank."""

    global_batch: int
    micro_batch: int
    group_size: int = 1

    def __post_init__(self):
        _positive_int("the global batch (batch_size)", self.global_batch)
        _positive_int("micro_batch_size", self.micro_batch)
        _positive_int("the group size", self.group_size)
        per_step = self.micro_batch * self.group_size
        if self.global_batch % per_step:
            if self.global_batch % self.group_size:
                fix = f"choose a batch_size that is a multiple of {self.group_size}"
            else:
                fix = (f"choose a micro_batch_size that divides the per-rank share "
                       f"{self.global_batch // self.group_size}")
            raise Q0ConfigError(
                f"a global batch of {self.global_batch} sequences cannot be reached with microbatches of "
                f"{self.micro_batch} on {self.group_size} rank(s): that needs {self.global_batch} / "
                f"({self.micro_batch} x {self.group_size}) = {self.global_batch / per_step:g} forward passes per "
                f"rank, not a whole number; {fix}")

    @classmethod
    def resolve(cls, global_batch: int, micro_batch: int, group_size: int = 1) -> "BatchPlan":
        """``micro_batch = 0`` takes the rank's whole share (no accumulation)."""
        _positive_int("the group size", group_size)
        _positive_int("the global batch (batch_size)", global_batch)
        if micro_batch == 0:
            if global_batch % group_size:
                raise Q0ConfigError(f"a global batch of {global_batch} sequences does not split evenly over "
                                    f"{group_size} ranks; choose a batch_size that is a multiple of {group_size}")
            micro_batch = global_batch // group_size
        return cls(global_batch, micro_batch, group_size)

    @property
    def accumulation(self) -> int:
        return self.global_batch // (self.micro_batch * self.group_size)

    def tokens_per_step(self, seq_len: int) -> int:
        return self.global_batch * seq_len


def auto_micro_batch(global_batches: Iterable[int], group_size: int) -> int:
    """The largest microbatch that reaches every global batch in ``global_batches`` on ``group_size``
    ranks (the gcd of the per-rank shares), so one stream of fixed-size microbatches serves a run whose
    batch size changes between cycles."""
    shares = []
    for batch in global_batches:
        BatchPlan.resolve(batch, 0, group_size)  # refuses a batch that does not split over the group
        shares.append(batch // group_size)
    return math.gcd(*shares)


def microbatches(stream, plan: BatchPlan, to_device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``plan.accumulation`` microbatches of one optimizer step from this rank's stream, on the device.

    One request brings the whole step (``next_tokens``: metered as that many batches), one contiguous
    block crosses to the device, and the microbatches are views of it there: per step one round trip to
    the data server and one pinned copy, where one per microbatch (two pinned strided views each) kept
    the host busy between the GPU's forwards. A group's ranks draw their shards in step."""
    tokens = to_device(stream.next_tokens(plan.accumulation))
    return [(tokens[i, :, :-1], tokens[i, :, 1:]) for i in range(plan.accumulation)]


def steps_per_epoch(epoch_tokens: int, global_batch: int, seq_len: int) -> float:
    """Optimizer steps in one epoch: a function of the global batch alone."""
    return epoch_tokens / (global_batch * seq_len)


def check_batches(batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    if not batches:
        raise Q0ConfigError("a training step needs at least one microbatch")
    for inputs, targets in batches:
        if inputs.shape != targets.shape:
            raise Q0ConfigError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must have the "
                                f"same shape")
