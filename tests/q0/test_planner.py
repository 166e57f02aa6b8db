import math

import pytest

from q0_reference.errors import Q0ConfigError
from q0_reference.plan_report import plan_report
from q0_reference.planner import Plan, PlannerThresholds, format_plan, plan
from q0_reference.schedule import steps_for_epochs


@pytest.mark.parametrize("epochs, trajectories", [
    (8, 1), (64, 1), (128, 1), (128.5, 2), (200, 2), (256, 2), (300, 3), (512, 3), (513, 4), (768, 4),
    (769, 5), (960, 5), (5000, 5),
])
def test_trajectory_staircase(epochs, trajectories):
    p = plan(epochs)
    assert p.mode == "cyclic" and p.n_trajectories == trajectories


def test_reference_budget_960_epochs():
    p = plan(960)
    assert (p.n_trajectories, p.cycles_per_trajectory, p.cycle_epochs, p.warmup_cycles) == (5, 96, 2.0, 8)
    assert p.epochs_per_trajectory == 192 and p.total_epochs == 960 and p.n_snapshots == 480
    assert p.snapshot_epochs()[:3] == (2.0, 4.0, 6.0) and p.snapshot_epochs()[-1] == 192.0
    assert not p.has_teacher(7) and p.has_teacher(8)


def test_remainder_stretches_cycles_instead_of_being_wasted():
    p = plan(9)  # one trajectory, 4 cycles: 9 / 4 = 2.25 epochs each
    assert (p.n_trajectories, p.cycles_per_trajectory, p.cycle_epochs) == (1, 4, 2.25)
    p = plan(300)  # three trajectories of 100 epochs: 50 cycles of 2
    assert (p.cycles_per_trajectory, p.cycle_epochs) == (50, 2.0)


@pytest.mark.parametrize("epochs, warmup", [(960, 8), (128, 8), (64, 8), (32, 4), (20, 2), (12, 1), (8, 1)])
def test_warmup_is_eight_cycles_capped_at_a_quarter_of_the_trajectory(epochs, warmup):
    p = plan(epochs)
    assert p.warmup_cycles == warmup
    assert p.warmup_cycles <= max(1, p.cycles_per_trajectory // 4)


@pytest.mark.parametrize("epochs", [0.25, 1, 4, 7.99])
def test_small_budget_trains_normally_then_packs_four_cycles_into_the_end(epochs):
    p = plan(epochs)
    assert p.mode == "packed" and p.n_trajectories == 1 and p.cycles_per_trajectory == 4
    assert p.lead_in_epochs == pytest.approx(epochs / 2)
    assert p.cycle_epochs == pytest.approx(epochs / 8)
    assert p.snapshot_epochs()[-1] == pytest.approx(epochs)
    assert p.snapshot_epochs()[0] > epochs / 2  # every cycle lies in the final half
    assert p.warmup_cycles == 1


def test_total_epochs_never_exceed_the_budget():
    budgets = [0.001, 0.1, 1 / 3, 2.2, 7.999999, 8, 8.000001, 10.1, 127.9, 128, 128.0000001, 255.3, 257,
               333.3, 511.99, 600.7, 768, 768.1, 959.9, 960, 1234.567, 1e4 + 0.1]
    budgets += [0.7 * k + 0.013 * k * k for k in range(1, 400)]
    for epochs in budgets:
        p = plan(epochs)
        assert p.total_epochs <= epochs, epochs
        assert p.total_epochs >= 0.999 * epochs, epochs  # and nearly all of it is used
        assert 1 <= p.warmup_cycles <= p.cycles_per_trajectory


def test_thresholds_are_parameters():
    t = PlannerThresholds(trajectory_staircase=((10.0, 1), (20.0, 3)), max_trajectories=4, cycle_epochs=1.0,
                          warmup_cycles=2, small_budget_epochs=2.0, packed_cycles=2, packed_fraction=0.25)
    assert plan(10, t).n_trajectories == 1
    assert plan(15, t).n_trajectories == 3 and plan(15, t).cycles_per_trajectory == 5
    assert plan(21, t).n_trajectories == 4
    small = plan(1.5, t)
    assert small.mode == "packed" and small.cycles_per_trajectory == 2
    assert small.lead_in_epochs == pytest.approx(1.125) and small.cycle_epochs == pytest.approx(0.1875)


def test_trajectory_schedule_in_steps_fits_the_plan():
    p = plan(960)
    s = p.trajectory_schedule(tokens_per_epoch=100_000_000, tokens_per_step=524_288)
    assert s.cycle_steps == 381  # 2e8 / 524288 = 381.47, worked by hand
    assert s.n_cycles == 96 and s.lead_in_steps == 0
    assert s.total_steps * 524_288 <= 192 * 100_000_000
    packed = plan(4).trajectory_schedule(tokens_per_epoch=10_000, tokens_per_step=100)
    assert packed.cycle_steps == 50 and packed.lead_in_steps == 200 and packed.total_steps == 400
    with pytest.raises(Q0ConfigError, match="smaller batches"):
        plan(4).trajectory_schedule(tokens_per_epoch=1000, tokens_per_step=500)
    for epochs in (3.7, 9.3, 130.1):
        p = plan(epochs)
        sched = p.trajectory_schedule(tokens_per_epoch=12_345, tokens_per_step=128)
        assert sched.total_steps <= steps_for_epochs(p.epochs_per_trajectory, 12_345, 128)


def test_format_plan_states_the_numbers():
    text = plan_report(960)
    for fragment in ("trajectories", "5", "96 of 2 epochs", "8 cycle(s)", "480", "960 of 960"):
        assert fragment in text
    packed = format_plan(plan(4))
    assert "packed" in packed and "plain training" in packed and "2 epochs" in packed


@pytest.mark.parametrize("bad", [0, -3, float("nan"), float("inf"), "ten", True])
def test_bad_budget_is_a_clear_error(bad):
    with pytest.raises(Q0ConfigError, match="budget"):
        plan(bad)


def test_bad_thresholds_are_clear_errors():
    with pytest.raises(Q0ConfigError, match="increase"):
        PlannerThresholds(trajectory_staircase=((256.0, 2), (128.0, 1)))
    with pytest.raises(Q0ConfigError, match="never fall"):
        PlannerThresholds(trajectory_staircase=((128.0, 3), (256.0, 2)))
    with pytest.raises(Q0ConfigError, match="packed_fraction"):
        PlannerThresholds(packed_fraction=0.0)


def test_plan_is_frozen():
    p = plan(100)
    assert isinstance(p, Plan)
    with pytest.raises(AttributeError):
        p.n_trajectories = 3
    assert math.isclose(p.cycle_epochs * p.cycles_per_trajectory, 100)
