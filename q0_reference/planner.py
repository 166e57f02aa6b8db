"""Allocation planner: how q0 spends an epoch budget on trajectories, cycles and snapshots.

Rules (every threshold is a field of :class:`PlannerThresholds`):
- Trajectories follow a staircase in the budget: one up to 128 epochs, two up to 256, three up to 512,
  four up to 768, five beyond. A single long trajectory keeps improving until about 128 epochs; past
  that, a second independent trajectory adds more to the ensemble than extra cycles on the first.
- The budget is split equally between trajectories. Each is cut into cycles of ``cycle_epochs`` (2); a
  remainder that does not make a whole cycle is spread over the cycles, which are stretched to use the
  whole budget (never shortened below ``cycle_epochs``).
- The first ``warmup_cycles`` cycles of a trajectory train without a teacher; chain distillation from
  the predecessor snapshot starts after them. The reference is 8 cycles, but never more than
  ``max_warmup_fraction`` (a quarter) of a trajectory's cycles, rounded down, and at least 1 (the first
  cycle has no predecessor to learn from anyway). So 64+ cycles get 8, 16 cycles get 4, 4 cycles get 1.
- Below ``small_budget_epochs`` (8) there is no room for a trajectory of 2-epoch cycles: one trajectory
  trains normally for the first ``1 - packed_fraction`` of the budget, then packs ``packed_cycles`` (4)
  short cycles into the rest, distilling from the second packed cycle on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from q0_reference.errors import Q0ConfigError
from q0_reference.schedule import CyclicSchedule, steps_for_epochs

MODES = ("cyclic", "packed")


@dataclass(frozen=True)
class PlannerThresholds:
    trajectory_staircase: tuple[tuple[float, int], ...] = ((128.0, 1), (256.0, 2), (512.0, 3), (768.0, 4))
    max_trajectories: int = 5
    cycle_epochs: float = 2.0
    warmup_cycles: int = 8
    max_warmup_fraction: float = 0.25
    small_budget_epochs: float = 8.0
    packed_cycles: int = 4
    packed_fraction: float = 0.5

    def __post_init__(self):
        steps = tuple((float(limit), int(n)) for limit, n in self.trajectory_staircase)
        object.__setattr__(self, "trajectory_staircase", steps)
        limits = [limit for limit, _ in steps]
        counts = [n for _, n in steps] + [self.max_trajectories]
        if limits != sorted(limits) or len(set(limits)) != len(limits):
            raise Q0ConfigError(f"trajectory_staircase limits must increase strictly, got {limits}")
        if any(n < 1 for n in counts) or counts != sorted(counts):
            raise Q0ConfigError(f"trajectory counts must be >= 1 and never fall as the budget grows, got {counts}")
        if not self.cycle_epochs > 0:
            raise Q0ConfigError(f"cycle_epochs must be positive, got {self.cycle_epochs!r}")
        if self.warmup_cycles < 1:
            raise Q0ConfigError(f"warmup_cycles must be >= 1, got {self.warmup_cycles!r}")
        if not 0.0 < self.max_warmup_fraction <= 1.0:
            raise Q0ConfigError(f"max_warmup_fraction must be in (0, 1], got {self.max_warmup_fraction!r}")
        if not self.small_budget_epochs >= 0:
            raise Q0ConfigError(f"small_budget_epochs must be >= 0, got {self.small_budget_epochs!r}")
        if self.packed_cycles < 1:
            raise Q0ConfigError(f"packed_cycles must be >= 1, got {self.packed_cycles!r}")
        if not 0.0 < self.packed_fraction <= 1.0:
            raise Q0ConfigError(f"packed_fraction must be in (0, 1], got {self.packed_fraction!r}")

    def trajectories_for(self, epochs: float) -> int:
        for limit, n in self.trajectory_staircase:
            if epochs <= limit:
                return n
        return self.max_trajectories


@dataclass(frozen=True)
class Plan:
    """One trajectory = ``lead_in_epochs`` of plain training, then ``cycles_per_trajectory`` cycles."""

    budget_epochs: float
    mode: str
    n_trajectories: int
    cycles_per_trajectory: int
    cycle_epochs: float
    warmup_cycles: int
    lead_in_epochs: float = 0.0

    @property
    def epochs_per_trajectory(self) -> float:
        return self.lead_in_epochs + self.cycles_per_trajectory * self.cycle_epochs

    @property
    def total_epochs(self) -> float:
        return self.n_trajectories * self.epochs_per_trajectory

    @property
    def n_snapshots(self) -> int:
        return self.n_trajectories * self.cycles_per_trajectory

    @property
    def distilled_cycles_per_trajectory(self) -> int:
        return self.cycles_per_trajectory - self.warmup_cycles

    def snapshot_epochs(self) -> tuple[float, ...]:
        """Epochs into a trajectory at which each cycle ends and its snapshot is taken."""
        return tuple(self.lead_in_epochs + (c + 1) * self.cycle_epochs for c in range(self.cycles_per_trajectory))

    def has_teacher(self, cycle: int) -> bool:
        """Whether cycle ``cycle`` (0-based) distils from the snapshot of cycle ``cycle - 1``."""
        return cycle >= self.warmup_cycles

    def trajectory_schedule(self, tokens_per_epoch: int, tokens_per_step: int | Sequence[int], *,
                            lr_floor: float = 0.08, wd_floor: float = 0.7, warmup_steps: int = 0,
                            endpoint: bool = True) -> CyclicSchedule:
        """The step schedule of one trajectory for a given split size and batch, in whole steps that
        never consume more than ``epochs_per_trajectory``.

        ``tokens_per_step`` may give one batch per cycle (a batch-size schedule): each cycle then has
        ``floor(cycle_epochs * tokens_per_epoch / its batch)`` steps, and a lead-in trains at the first
        cycle's batch."""
        per_cycle = ((int(tokens_per_step),) * self.cycles_per_trajectory if isinstance(tokens_per_step, int)
                     else tuple(int(t) for t in tokens_per_step))
        if len(per_cycle) != self.cycles_per_trajectory:
            raise Q0ConfigError(f"{len(per_cycle)} batch sizes given for {self.cycles_per_trajectory} cycles")
        lengths = []
        for tokens in per_cycle:
            cycle_steps = steps_for_epochs(self.cycle_epochs, tokens_per_epoch, tokens)
            if cycle_steps < 2:
                raise Q0ConfigError(
                    f"a cycle of {self.cycle_epochs:g} epochs is only {cycle_steps} step(s) of {tokens} "
                    f"tokens on a {tokens_per_epoch}-token split; a cycle needs at least 2: use smaller batches")
            lengths.append(cycle_steps)
        lead_in_steps = 0
        if self.lead_in_epochs:
            budget_steps = steps_for_epochs(self.epochs_per_trajectory, tokens_per_epoch, per_cycle[0])
            if len(set(per_cycle)) == 1:
                lead_in_steps = max(0, budget_steps - sum(lengths))
            else:  # tokens left once the cycles are paid for, in steps of the first cycle's batch
                cycle_tokens = sum(n * t for n, t in zip(lengths, per_cycle))
                budget = self.epochs_per_trajectory * tokens_per_epoch
                lead_in_steps = max(0, int((budget - cycle_tokens) // per_cycle[0]))
        cycle_steps = lengths[0] if len(set(lengths)) == 1 else tuple(lengths)
        return CyclicSchedule(cycle_steps=cycle_steps, n_cycles=self.cycles_per_trajectory, lr_floor=lr_floor,
                              wd_floor=wd_floor, lead_in_steps=lead_in_steps, warmup_steps=warmup_steps,
                              endpoint=endpoint)


def _largest_fitting(value: float, fits) -> float:
    """``value``, nudged down by a few ulps if rounding made ``fits(value)`` false."""
    while not fits(value):
        value = math.nextafter(value, 0.0)
    return value


def _check_budget(epochs: float) -> float:
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)):
        raise Q0ConfigError(f"the epoch budget must be a number, got {epochs!r}")
    epochs = float(epochs)
    if not (math.isfinite(epochs) and epochs > 0):
        raise Q0ConfigError(f"the epoch budget must be a positive finite number of epochs, got {epochs!r}")
    return epochs


def plan(epochs: float, thresholds: PlannerThresholds = PlannerThresholds()) -> Plan:
    epochs = _check_budget(epochs)
    t = thresholds
    if epochs < t.small_budget_epochs:
        cycles = t.packed_cycles
        cycle_epochs = _largest_fitting(epochs * t.packed_fraction / cycles, lambda ce: cycles * ce <= epochs)
        lead_in = _largest_fitting(epochs - cycles * cycle_epochs, lambda li: li + cycles * cycle_epochs <= epochs)
        return Plan(budget_epochs=epochs, mode="packed", n_trajectories=1, cycles_per_trajectory=cycles,
                    cycle_epochs=cycle_epochs, warmup_cycles=1, lead_in_epochs=max(lead_in, 0.0))

    n = t.trajectories_for(epochs)
    per_trajectory = epochs / n
    cycles = max(1, int(math.floor(per_trajectory / t.cycle_epochs + 1e-9)))
    cycle_epochs = _largest_fitting(per_trajectory / cycles, lambda ce: n * (cycles * ce) <= epochs)
    warmup = max(1, min(t.warmup_cycles, int(math.floor(cycles * t.max_warmup_fraction))))
    return Plan(budget_epochs=epochs, mode="cyclic", n_trajectories=n, cycles_per_trajectory=cycles,
                cycle_epochs=cycle_epochs, warmup_cycles=warmup)


@dataclass(frozen=True)
class MemberPlan:
    """How the naive ensemble splits a budget: ``members`` independent models of ``epochs_per_member`` each."""

    budget_epochs: float
    saturation_epochs: float  # where a single model stops improving on the track
    max_members: int
    members: int

    @property
    def epochs_per_member(self) -> float:
        return self.budget_epochs / self.members

    def rule(self) -> str:
        """The rule and its numbers, in words, for the record."""
        return (f"members = min({self.max_members}, max(1, floor({_fmt(self.budget_epochs)} budget epochs / "
                f"{_fmt(self.saturation_epochs)} epochs where a single model stops improving))) = {self.members}, "
                f"{_fmt(self.epochs_per_member)} epochs each")

    def to_meta(self) -> dict:
        return {"members": self.members, "epochs_per_member": self.epochs_per_member,
                "saturation_epochs": self.saturation_epochs, "max_members": self.max_members, "rule": self.rule()}


def naive_ensemble_members(epochs: float, saturation_epochs: float, max_members: int) -> MemberPlan:
    """As many members as the budget gives each at least ``saturation_epochs``, at most ``max_members``.

    A member trained for fewer epochs than a single model needs to stop improving is a worse model, and
    averaging worse models does not make up for it (docs/study: four 1-epoch members at a 4-epoch budget
    score below one 4-epoch model); so the budget is split only once every member can reach that point.
    Below it, the ensemble is one model trained for the whole budget.
    """
    epochs = _check_budget(epochs)
    if isinstance(saturation_epochs, bool) or not isinstance(saturation_epochs, (int, float)) \
            or not (math.isfinite(saturation_epochs) and saturation_epochs > 0):
        raise Q0ConfigError(f"member_min_epochs must be a positive number of epochs, got {saturation_epochs!r}")
    if isinstance(max_members, bool) or not isinstance(max_members, int) or max_members < 1:
        raise Q0ConfigError(f"members (the most members) must be a positive integer, got {max_members!r}")
    members = max(1, min(max_members, int(math.floor(epochs / saturation_epochs + 1e-9))))
    return MemberPlan(epochs, float(saturation_epochs), max_members, members)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def format_plan(p: Plan) -> str:
    rows = [("budget", f"{_fmt(p.budget_epochs)} epochs")]
    if p.mode == "packed":
        rows.append(("mode", "packed: small budget, plain training then short cycles"))
        rows.append(("plain training", f"{_fmt(p.lead_in_epochs)} epochs"))
    else:
        rows.append(("mode", "cyclic: hyper-epoch trajectories"))
    rows += [
        ("trajectories", str(p.n_trajectories)),
        ("epochs per trajectory", _fmt(p.epochs_per_trajectory)),
        ("cycles per trajectory", f"{p.cycles_per_trajectory} of {_fmt(p.cycle_epochs)} epochs"),
        ("warm-up", f"{p.warmup_cycles} cycle(s) without a teacher, then chain distillation "
                    f"from the predecessor ({p.distilled_cycles_per_trajectory} distilled cycle(s))"),
        ("snapshots", f"{p.n_snapshots} (one per cycle end)"),
        ("epochs used", f"{_fmt(p.total_epochs)} of {_fmt(p.budget_epochs)}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(["q0 allocation plan"] + [f"  {name:<{width}}  {value}" for name, value in rows])
