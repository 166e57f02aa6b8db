"""q0 under a compute class's clock: measure a step before the clock starts, plan the cycles to end at the
cap, and cut the last cycle short rather than miss it.

Slowrun's timed tracks (15 min, 1 h, 2 h) are the common case. Planned for the epoch budget alone, q0
laid out 32 epochs of cycles, met the cap after 4.45 of them and kept the 2 snapshots it had reached. The
harness's clock starts with the first real batch, so what happens before it is free:

1. **Warm-up.** The first trajectory's student takes `WARMUP_STEPS + TIMED_STEPS` plain optimizer steps,
   then as many distilled ones, on `ctx.warmup_batches` (random tokens, never metered): this compiles
   both forwards and the optimizer step outside the cap and times each kind of step (the median of the
   last `TIMED_STEPS`). Its weights and optimizer state are copied to the host before and put back after,
   so training starts from the same state as without a warm-up (the copy also times a snapshot's
   transfer to the host).
2. **Plan to the clock.** The largest epoch budget (at most the run's) whose plan fits in the seconds
   left, less `MARGIN` of them, is what the planner lays out: each rank group's trajectories in turn,
   plain and distilled cycles at their own measured speeds, and a snapshot per cycle. Groups of another
   size than the measured one are assumed to scale linearly.
3. **Guard.** At each log point and cycle end the group's leader compares the seconds left with what
   the steps to the next such point need (at the speed seen so far in this run) plus a snapshot; when
   they do not fit, the group takes its snapshot now (mid-cycle: tagged as cut at the cap) and stops,
   so the last snapshot lands before the cap and the prior is set in time. The plan leaves `MARGIN`, so
   the guard only acts when training ran slower than the warm-up measured; it then trains as long as
   the clock allows rather than dropping the whole cycle. The leader decides for its group (its ranks
   must stop on the same step, or a collective would wait forever).

The plan's budget goes into every checkpoint, so a resumed run keeps the plan it started with.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from q0_reference.checkpointing import _comm_device, to_cpu

WARMUP_STEPS = 2  # steps that compile and touch memory first: not timed
TIMED_STEPS = 3  # steps timed after them (their median)
MARGIN = 0.05  # of the seconds left: kept free for checkpoints, logging and estimates that run short
MIN_BUDGET_EPOCHS = 0.05  # below this the planner has no sensible plan: the smallest is used and the guard cuts it


@dataclass(frozen=True)
class StepCost:
    """What training costs on this rank group, measured on warm-up batches."""

    plain_s: float  # one optimizer step without a teacher
    distilled_s: float  # one optimizer step with the teacher's forward
    snapshot_s: float  # the weights (and optimizer state) to the host: a snapshot's transfer, at least
    tokens_per_step: int  # the global batch's tokens, the step both were timed at
    group_size: int  # ranks in the group that was timed
    warmup_s: float  # the whole warm-up, compile included

    def seconds_per_token(self, distilled: bool, group_size: int) -> float:
        step = self.distilled_s if distilled else self.plain_s
        return step / self.tokens_per_step * self.group_size / group_size

    def to_log(self) -> dict:
        return {key: round(value, 6) if isinstance(value, float) else value for key, value in asdict(self).items()}


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure_step_cost(ctx, student, batch, runtime, distill, make_teacher: Callable[[], object]) -> StepCost:
    """Time plain and distilled steps of `student` on warm-up batches, leaving its state as it found it.

    `student` is a recipes._Student, `batch` the first cycle's BatchPlan, `make_teacher()` builds the
    teacher a distilled cycle would use (from the student's current weights)."""
    started = time.perf_counter()
    _sync(runtime.device)
    saved = to_cpu({"model": student.model.state_dict(), "optimizer": student.optimizer.state_dict()})
    _sync(runtime.device)
    snapshot_s = time.perf_counter() - started
    per_kind = WARMUP_STEPS + TIMED_STEPS
    stream = ctx.warmup_batches(2 * per_kind * batch.accumulation, batch.micro_batch)
    teacher = None
    times: dict[bool, list[float]] = {False: [], True: []}
    for distilled in (False, True):
        if distilled:
            teacher = make_teacher()
        for _ in range(per_kind):
            batches = [tuple(runtime.to_device(t) for t in next(stream)) for _ in range(batch.accumulation)]
            begin = time.perf_counter()
            student.step(batches, teacher, step=0, distill=distill)  # (its loss is read: the device is synced)
            times[distilled].append(time.perf_counter() - begin)
    del teacher
    student.model.load_state_dict(saved["model"])
    student.optimizer.load_state_dict(saved["optimizer"])
    student.optimizer.zero_grad(set_to_none=True)
    _sync(runtime.device)
    return StepCost(plain_s=statistics.median(times[False][WARMUP_STEPS:]),
                    distilled_s=statistics.median(times[True][WARMUP_STEPS:]), snapshot_s=snapshot_s,
                    tokens_per_step=batch.tokens_per_step(ctx.seq_len), group_size=batch.group_size,
                    warmup_s=time.perf_counter() - started)


def plan_seconds(allocation, epoch_tokens: int, cost: StepCost, n_groups: int, group_size: int) -> float:
    """Seconds the slowest rank group needs for `allocation`: its trajectories in turn, each cycle at the
    speed of its kind, a snapshot per cycle."""
    jobs = -(-allocation.n_trajectories // max(1, n_groups))
    plain_epochs = allocation.lead_in_epochs + allocation.warmup_cycles * allocation.cycle_epochs
    distilled_epochs = allocation.epochs_per_trajectory - plain_epochs
    trajectory = epoch_tokens * (plain_epochs * cost.seconds_per_token(False, group_size)
                                 + max(0.0, distilled_epochs) * cost.seconds_per_token(True, group_size))
    return jobs * (trajectory + allocation.cycles_per_trajectory * cost.snapshot_s)


def clock_budget(budget: float, seconds_left: float, time_of: Callable[[float], float]) -> float:
    """The largest epoch budget, at most `budget`, whose plan takes at most (1 - MARGIN) of `seconds_left`
    by `time_of(epochs)`; `MIN_BUDGET_EPOCHS` when even that does not fit (the guard then cuts it)."""
    available = (1.0 - MARGIN) * seconds_left
    if time_of(budget) <= available:
        return budget
    low, high = MIN_BUDGET_EPOCHS, budget
    if time_of(low) > available:
        return low
    for _ in range(40):  # time grows with the budget (a few planner steps aside): bisection is enough
        middle = (low + high) / 2
        if time_of(middle) <= available:
            low = middle
        else:
            high = middle
    return low


class CapGuard:
    """Decides, at a check point, whether the steps to the next one still fit before the cap.

    The speed is what the training clock has shown since the last check (the harness's own clock, read
    through `ctx.remaining_seconds`, so snapshots and logging are in it), never faster than the warm-up
    measured: a slow spell of the machine is seen before it costs the cap."""

    def __init__(self, ctx, cost: StepCost, placement, device: str):
        self.ctx, self.cost, self.placement, self.device = ctx, cost, placement, device
        self._steps = 0
        self._last: tuple[float, int] | None = None  # (seconds left, steps) at the last check
        self._step_s = cost.plain_s

    def stepped(self) -> None:
        """One optimizer step was taken (counted across trajectories)."""
        self._steps += 1

    def should_stop(self, steps: int, distilled: bool) -> bool:
        """True when `steps` more steps and a snapshot do not fit in the seconds left; asked of every rank
        of the group at the same step, answered by its leader."""
        stop = False
        if self.placement.is_leader:
            left = self.ctx.remaining_seconds
            if left is not None:
                if self._last is not None and self._steps > self._last[1]:
                    self._step_s = (self._last[0] - left) / (self._steps - self._last[1])
                self._last = (left, self._steps)
                floor = self.cost.distilled_s if distilled else self.cost.plain_s
                stop = left < steps * max(self._step_s, floor) + 2 * self.cost.snapshot_s
        return self._agree(stop)

    def _agree(self, cut: bool) -> bool:
        if not self.placement.distributed:
            return cut
        import torch.distributed as dist

        flag = torch.tensor([1 if cut else 0], device=_comm_device(self.placement))
        dist.broadcast(flag, src=self.placement.leader_rank, group=self.placement.process_group)
        return bool(flag.item())
