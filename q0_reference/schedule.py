"""Learning-rate and weight-decay schedules, as multipliers of the optimizer's base values.

q0's trajectory schedule is cyclic. Inside a cycle the learning-rate multiplier falls in a straight line
from 1 to ``lr_floor``; weight decay moves in anti-phase,

    wd_mult = wd_floor + (1 - wd_floor) * (1 - lr_mult) / (1 - lr_floor),

so it rises from ``wd_floor`` to 1 and peaks on the last step of the cycle, where the snapshot is taken:
the snapshot is the low-noise, most-regularised point of its cycle. The next cycle restarts at the peak
learning rate with no warm-up, which kicks the weights out of the basin just found so the next snapshot
is a different model. An optional warm-up applies once, to the first steps of the whole run.

Cycles may differ in length (in steps) when the batch size changes between cycles: a cycle is a fixed
number of epochs, so a cycle of larger batches has fewer steps (:func:`block_triangular_batches` is
PR #90's schedule of batch sizes across cycles). Where exactly the floor falls is a convention: by
default the last step of a cycle runs at ``lr_floor`` (position = step / (length - 1)); with
``endpoint=False`` the multiplier falls by (1 - lr_floor) / length per step and the last step runs at
``lr_floor + (1 - lr_floor) / length``, the floor being where the next step would be (PR #90's code).

A cyclic schedule may start with a lead-in of ordinary training (multipliers 1 and ``wd_floor``, the
values a cycle starts with, so the hand-over is continuous). That is the small-budget shape of the
planner: train normally, then pack a few short cycles into the end (:func:`packed_cycles_schedule`).

The single-model baseline uses :class:`WarmupDecaySchedule`: linear warm-up, then cosine or linear
decay to ``final_lr_mult``.

Schedules count optimizer steps (0-based). Callers that think in tokens or epochs convert with
:func:`steps_for_epochs`; :func:`cyclic_lr_multiplier` and :func:`anti_phase_wd_multiplier` also work
on a position measured in any unit.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from q0_reference.errors import Q0ConfigError

SCHEDULE_SHAPES = ("cosine", "linear")


@dataclass(frozen=True)
class Multipliers:
    lr: float
    weight_decay: float


def cyclic_lr_multiplier(position: float, lr_floor: float) -> float:
    """LR multiplier at ``position`` in [0, 1] through a cycle: 1 at the start, ``lr_floor`` at the end."""
    if not 0.0 <= position <= 1.0:
        raise Q0ConfigError(f"position in a cycle must be in [0, 1], got {position!r}")
    return 1.0 - (1.0 - lr_floor) * position


def anti_phase_wd_multiplier(lr_mult: float, lr_floor: float, wd_floor: float) -> float:
    """WD multiplier that mirrors the LR: ``wd_floor`` where the LR is 1, and 1 where it is ``lr_floor``."""
    return wd_floor + (1.0 - wd_floor) * (1.0 - lr_mult) / (1.0 - lr_floor)


def _check_floors(lr_floor: float, wd_floor: float) -> None:
    if not 0.0 <= lr_floor < 1.0:
        raise Q0ConfigError(f"lr_floor must be in [0, 1), got {lr_floor!r}")
    if not 0.0 <= wd_floor <= 1.0:
        raise Q0ConfigError(f"wd_floor must be in [0, 1], got {wd_floor!r}")


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise Q0ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class CyclicSchedule:
    """``lead_in_steps`` of ordinary training, then ``n_cycles`` cycles of ``cycle_steps`` steps each, or
    of ``cycle_steps[c]`` steps for cycle c when a tuple gives each cycle its own length."""

    cycle_steps: int | tuple[int, ...]
    n_cycles: int
    lr_floor: float = 0.08
    wd_floor: float = 0.7
    lead_in_steps: int = 0
    warmup_steps: int = 0
    endpoint: bool = True

    def __post_init__(self):
        _check_count("n_cycles", self.n_cycles, 1)
        if isinstance(self.cycle_steps, (tuple, list)):
            object.__setattr__(self, "cycle_steps", tuple(self.cycle_steps))
            if len(self.cycle_steps) != self.n_cycles:
                raise Q0ConfigError(f"{len(self.cycle_steps)} cycle lengths given for {self.n_cycles} cycles")
            for length in self.cycle_steps:
                _check_count("every cycle length", length, 2)
        else:
            _check_count("cycle_steps", self.cycle_steps, 2)
        _check_count("lead_in_steps", self.lead_in_steps, 0)
        _check_count("warmup_steps", self.warmup_steps, 0)
        _check_floors(self.lr_floor, self.wd_floor)
        lengths = self.cycle_lengths
        starts = [self.lead_in_steps]
        for length in lengths[:-1]:
            starts.append(starts[-1] + length)
        object.__setattr__(self, "_starts", tuple(starts))

    @property
    def cycle_lengths(self) -> tuple[int, ...]:
        if isinstance(self.cycle_steps, tuple):
            return self.cycle_steps
        return (self.cycle_steps,) * self.n_cycles

    def cycle_start(self, cycle: int) -> int:
        return self._starts[cycle]

    @property
    def total_steps(self) -> int:
        return self.lead_in_steps + sum(self.cycle_lengths)

    def _check_step(self, step: int) -> None:
        if not 0 <= step < self.total_steps:
            raise Q0ConfigError(f"step {step} is outside this schedule's {self.total_steps} steps")

    def cycle_index(self, step: int) -> int | None:
        """Which cycle ``step`` belongs to (0-based), or None during the lead-in."""
        self._check_step(step)
        if step < self.lead_in_steps:
            return None
        if not isinstance(self.cycle_steps, tuple):
            return (step - self.lead_in_steps) // self.cycle_steps
        return bisect.bisect_right(self._starts, step) - 1

    def is_cycle_end(self, step: int) -> bool:
        """True on the last step of a cycle: take the snapshot after this step."""
        cycle = self.cycle_index(step)
        return cycle is not None and step == self._starts[cycle] + self.cycle_lengths[cycle] - 1

    def cycle_end_steps(self) -> tuple[int, ...]:
        return tuple(start + length - 1 for start, length in zip(self._starts, self.cycle_lengths))

    def at(self, step: int) -> Multipliers:
        self._check_step(step)
        if step < self.lead_in_steps:
            lr = 1.0
        else:
            cycle = self.cycle_index(step)
            length = self.cycle_lengths[cycle]
            position = (step - self._starts[cycle]) / ((length - 1) if self.endpoint else length)
            lr = cyclic_lr_multiplier(position, self.lr_floor)
        wd = anti_phase_wd_multiplier(lr, self.lr_floor, self.wd_floor)
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return Multipliers(lr=lr, weight_decay=wd)


def packed_cycles_schedule(total_steps: int, n_cycles: int = 4, packed_fraction: float = 0.5, *,
                           lr_floor: float = 0.08, wd_floor: float = 0.7, warmup_steps: int = 0) -> CyclicSchedule:
    """Ordinary training for the first ``1 - packed_fraction`` of ``total_steps``, then ``n_cycles``
    equal short cycles in the rest. Steps that do not divide evenly go to the lead-in."""
    _check_count("total_steps", total_steps, 1)
    _check_count("n_cycles", n_cycles, 1)
    if not 0.0 < packed_fraction <= 1.0:
        raise Q0ConfigError(f"packed_fraction must be in (0, 1], got {packed_fraction!r}")
    cycle_steps = int(total_steps * packed_fraction) // n_cycles
    if cycle_steps < 2:
        raise Q0ConfigError(f"{total_steps} steps leave {cycle_steps} step(s) per packed cycle; a cycle needs at "
                            f"least 2: train more steps (smaller batches) or pack fewer cycles")
    return CyclicSchedule(cycle_steps=cycle_steps, n_cycles=n_cycles, lr_floor=lr_floor, wd_floor=wd_floor,
                          lead_in_steps=total_steps - n_cycles * cycle_steps, warmup_steps=warmup_steps)


@dataclass(frozen=True)
class WarmupDecaySchedule:
    """Linear warm-up over ``warmup_steps``, then decay to ``final_lr_mult`` on the last step; WD constant."""

    total_steps: int
    warmup_steps: int = 0
    final_lr_mult: float = 0.0
    shape: str = "cosine"

    def __post_init__(self):
        _check_count("total_steps", self.total_steps, 1)
        _check_count("warmup_steps", self.warmup_steps, 0)
        if self.warmup_steps > self.total_steps:
            raise Q0ConfigError(f"warmup_steps ({self.warmup_steps}) exceeds total_steps ({self.total_steps})")
        if not 0.0 <= self.final_lr_mult <= 1.0:
            raise Q0ConfigError(f"final_lr_mult must be in [0, 1], got {self.final_lr_mult!r}")
        if self.shape not in SCHEDULE_SHAPES:
            raise Q0ConfigError(f"shape must be one of {', '.join(SCHEDULE_SHAPES)}, got {self.shape!r}")

    def at(self, step: int) -> Multipliers:
        if not 0 <= step < self.total_steps:
            raise Q0ConfigError(f"step {step} is outside this schedule's {self.total_steps} steps")
        if step < self.warmup_steps:
            return Multipliers(lr=(step + 1) / self.warmup_steps, weight_decay=1.0)
        decay_steps = self.total_steps - self.warmup_steps - 1
        progress = (step - self.warmup_steps) / decay_steps if decay_steps > 0 else 1.0
        if self.shape == "cosine":
            fall = 0.5 * (1.0 - math.cos(math.pi * progress))
        else:
            fall = progress
        return Multipliers(lr=1.0 - (1.0 - self.final_lr_mult) * fall, weight_decay=1.0)


def block_triangular_batches(n_cycles: int, peak: int, floor: int) -> tuple[int, ...]:
    """PR #90's batch size per cycle: with amp = 1 - |2c / (n - 1) - 1| (0 for the first and last cycle,
    1 in the middle), ``peak`` where amp >= 0.5, which is the middle half of the cycles, ``floor`` for the
    early and late ones. Small batches early and late give more, noisier steps where the weights move
    most (the start) and where the snapshots matter most (the end). One cycle gets ``peak``."""
    _check_count("n_cycles", n_cycles, 1)
    _check_count("peak batch", peak, 1)
    _check_count("floor batch", floor, 1)
    if floor > peak:
        raise Q0ConfigError(f"the floor batch ({floor}) must not exceed the peak batch ({peak})")
    if n_cycles == 1:
        return (peak,)
    return tuple(peak if 1.0 - abs(2.0 * c / (n_cycles - 1) - 1.0) >= 0.5 else floor for c in range(n_cycles))


def steps_for_epochs(epochs: float, tokens_per_epoch: int, tokens_per_step: int) -> int:
    """Whole optimizer steps that fit in ``epochs`` passes (rounded down, so a budget is never exceeded)."""
    if not epochs >= 0:
        raise Q0ConfigError(f"epochs must be >= 0, got {epochs!r}")
    _check_count("tokens_per_epoch", tokens_per_epoch, 1)
    _check_count("tokens_per_step", tokens_per_step, 1)
    # Start a hair high (0.3 epochs of 10 steps is 3 steps, not 2 from 2.9999999999999996), then step down
    # until the epochs these steps consume, computed the way an epoch meter computes them, fit the budget.
    steps = int(math.floor(epochs * tokens_per_epoch / tokens_per_step + 1e-9))
    while steps > 0 and steps * tokens_per_step / tokens_per_epoch > epochs:
        steps -= 1
    return steps
