"""q0 under a training-time cap: the warm-up, the plan to the clock and the guard (q0_reference.timed).

The clock here is the fake context's, driven by the data it served (a fixed number of seconds per
optimizer step), so every decision is deterministic; the real harness clock is exercised by
tests/runner/test_timed_q0.py.
"""

from __future__ import annotations

import pytest
import torch

from q0_reference import timed
from q0_reference.planner import Plan, plan
from q0_reference.recipes import Q0Settings, Recipe, train_q0
from tests.q0.fakes import FakeContext

HP = dict(d_model=32, n_layer=1, n_head=2, batch_size=8, micro_batch_size=0, warmup_steps=2, log_every=2,
          compile="off", autocast="fp32", snapshot_dtype="float32")
TOKENS_PER_STEP = 8 * 16  # FakeContext: seq_len 16


def _run(ctx, hp=None):
    hp = {**HP, **(hp or {})}
    return train_q0(ctx, Recipe.from_hparams(hp), Q0Settings.from_hparams(hp))


def _clocked(step_s: float, **kwargs) -> FakeContext:
    """A context whose training clock advances `step_s` seconds per optimizer step served."""
    ctx = FakeContext(**kwargs)
    ctx.train_clock = lambda: ctx.served_targets / TOKENS_PER_STEP * step_s
    taken = []
    save = ctx.save_snapshot

    def timed_save(model, tag, **rest):
        taken.append((tag, ctx.train_clock()))
        return save(model, tag, **rest)

    ctx.save_snapshot = timed_save
    ctx.taken = taken
    return ctx


def test_the_largest_budget_that_fits_the_clock():
    # 10 s per epoch, 100 s left: 95 s usable (MARGIN 5%), so 9.5 epochs
    assert timed.clock_budget(32.0, 100.0, lambda e: 10.0 * e) == pytest.approx(9.5, abs=1e-9)
    assert timed.clock_budget(4.0, 100.0, lambda e: 10.0 * e) == 4.0  # the run's budget fits: unchanged
    assert timed.clock_budget(4.0, 0.001, lambda e: 10.0 * e) == timed.MIN_BUDGET_EPOCHS


def test_plan_seconds_by_hand():
    allocation = Plan(budget_epochs=13.5, mode="cyclic", n_trajectories=3, cycles_per_trajectory=4, cycle_epochs=1.0,
                      warmup_cycles=1, lead_in_epochs=0.5)
    cost = timed.StepCost(plain_s=0.2, distilled_s=0.3, snapshot_s=0.5, tokens_per_step=100, group_size=1,
                          warmup_s=0.0)
    # per trajectory: plain 1.5 epochs x 1000 tokens x 0.002 s = 3 s, distilled 3 epochs x 1000 x 0.003 = 9 s,
    # 4 snapshots x 0.5 s = 2 s: 14 s; two groups run 3 trajectories as 2 + 1: the slower takes 28 s
    assert timed.plan_seconds(allocation, 1000, cost, n_groups=2, group_size=1) == pytest.approx(28.0)
    # a group of 2 ranks (the cost was timed on 1) takes half the time per token
    assert timed.plan_seconds(allocation, 1000, cost, n_groups=1, group_size=2) == pytest.approx(3 * (6 + 2))


def test_the_warm_up_reads_no_training_data_and_leaves_the_student_as_it_found_it():
    untimed = FakeContext(budget=4.0, seed=3)
    _run(untimed)
    timed_ctx = FakeContext(budget=4.0, seed=3, time_limit_s=1e9)
    _run(timed_ctx)
    plan_log, = [e for e in timed_ctx.logs if e.get("event") == "clock plan"]
    assert plan_log["planned_epochs"] == 4.0 and plan_log["plain_s"] > 0 and plan_log["distilled_s"] > 0
    assert timed_ctx.warmup_served == 2 * (timed.WARMUP_STEPS + timed.TIMED_STEPS)  # one microbatch per step
    assert timed_ctx.served_targets == untimed.served_targets
    assert [t for t, _, _ in timed_ctx.snapshots] == [t for t, _, _ in untimed.snapshots]
    for (tag, got, _), (_, expected, _) in zip(timed_ctx.snapshots, untimed.snapshots):
        for name in expected:
            assert torch.equal(got[name], expected[name]), (tag, name)


@pytest.fixture
def measured(monkeypatch):
    """The warm-up's measurement, fixed: 0.5 s a plain step, 0.6 a distilled one."""
    cost = timed.StepCost(plain_s=0.5, distilled_s=0.6, snapshot_s=0.01, tokens_per_step=TOKENS_PER_STEP,
                          group_size=1, warmup_s=1.0)
    monkeypatch.setattr(timed, "measure_step_cost", lambda *args, **kwargs: cost)
    return cost


def test_cycles_are_planned_to_end_at_the_cap(measured):
    ctx = _clocked(0.5, budget=32.0, seed=1, time_limit_s=60.0)
    allocation = _run(ctx)
    plan_log, = [e for e in ctx.logs if e.get("event") == "clock plan"]
    assert plan_log["planned_epochs"] < 32.0 and plan_log["planned_seconds"] <= 0.95 * 60.0
    assert allocation.budget_epochs == plan_log["planned_epochs"]
    # every planned cycle ran, nothing was cut, and the last snapshot came before the cap, near it
    assert len(ctx.snapshots) == allocation.n_snapshots
    assert not [e for e in ctx.logs if e.get("event") == "stopped for the cap"]
    last = ctx.taken[-1][1]
    assert last <= 60.0 and last >= 0.8 * 60.0
    assert ctx.ensemble == "prior"
    # planned for the whole budget, the same run would have needed far more than the cap
    whole = plan(32.0)
    assert whole.total_epochs * 4 * 0.5 > 60.0  # 4 steps per epoch at 0.5 s


@pytest.mark.parametrize("slower", [1.5, 3.0])
def test_a_run_slower_than_its_warm_up_stops_with_a_snapshot_before_the_cap(measured, slower):
    ctx = _clocked(0.5 * slower, budget=32.0, seed=1, time_limit_s=60.0)
    allocation = _run(ctx)
    stops = [e for e in ctx.logs if e.get("event") == "stopped for the cap"]
    assert len(stops) == 1
    assert len(ctx.snapshots) < allocation.n_snapshots
    times = [t for _, t in ctx.taken]
    assert max(times) <= 60.0  # every snapshot before the cap
    assert times[-1] >= 60.0 - (HP["log_every"] + 2) * 0.5 * slower  # and the last one as late as it could be
    assert ctx.ensemble == "prior"
    if stops[0]["cut_mid_cycle"]:
        assert ctx.snapshots[-1][0].endswith("-cut") and ctx.snapshots[-1][2]["cut_at_cap"] is True


def test_a_resumed_run_keeps_the_plan_its_checkpoint_carries(measured):
    first = _clocked(0.5, budget=32.0, seed=1, time_limit_s=60.0)
    _run(first)
    planned = [e for e in first.logs if e.get("event") == "clock plan"][0]["planned_epochs"]
    record = first.checkpoints[1]
    assert record["state"]["clock_budget"] == planned
    again = _clocked(0.5, budget=32.0, seed=1, time_limit_s=5.0, resume=record)  # little time left now
    _run(again)
    log, = [e for e in again.logs if e.get("event") == "clock plan"]
    assert log["resumed"] is True and log["planned_epochs"] == planned
