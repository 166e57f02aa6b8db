import pytest

from q0_reference.errors import Q0ConfigError
from q0_reference.schedule import (
    block_triangular_batches,
    CyclicSchedule,
    WarmupDecaySchedule,
    anti_phase_wd_multiplier,
    cyclic_lr_multiplier,
    packed_cycles_schedule,
    steps_for_epochs,
)


def test_cycle_falls_linearly_from_one_to_the_floor_and_restarts():
    s = CyclicSchedule(cycle_steps=5, n_cycles=3, lr_floor=0.08, wd_floor=0.7)
    # 5 steps from 1 to 0.08: a drop of 0.92 / 4 = 0.23 per step, worked by hand
    expected_lr = [1.0, 0.77, 0.54, 0.31, 0.08]
    for cycle in range(3):
        got = [s.at(cycle * 5 + i).lr for i in range(5)]
        assert got == pytest.approx(expected_lr)
    assert s.at(5).lr == 1.0  # no warm-up inside cycles: straight back to the peak


def test_weight_decay_moves_in_anti_phase_and_peaks_where_the_snapshot_is_taken():
    s = CyclicSchedule(cycle_steps=5, n_cycles=2, lr_floor=0.08, wd_floor=0.7)
    # wd rises by (1 - 0.7) / 4 = 0.075 per step from 0.7: worked by hand
    assert [s.at(i).weight_decay for i in range(5)] == pytest.approx([0.7, 0.775, 0.85, 0.925, 1.0])
    assert s.is_cycle_end(4) and s.at(4).weight_decay == pytest.approx(1.0)
    assert s.at(5).weight_decay == pytest.approx(0.7)


def test_pure_multiplier_functions_work_on_any_position_unit():
    # half-way through a cycle of 1e6 tokens
    lr = cyclic_lr_multiplier(5e5 / 1e6, lr_floor=0.2)
    assert lr == pytest.approx(0.6)
    assert anti_phase_wd_multiplier(lr, lr_floor=0.2, wd_floor=0.5) == pytest.approx(0.75)
    with pytest.raises(Q0ConfigError, match="position"):
        cyclic_lr_multiplier(1.5, 0.08)


def test_cycle_bookkeeping():
    s = CyclicSchedule(cycle_steps=4, n_cycles=3)
    assert s.total_steps == 12
    assert [s.cycle_index(i) for i in range(12)] == [0] * 4 + [1] * 4 + [2] * 4
    assert [i for i in range(12) if s.is_cycle_end(i)] == [3, 7, 11] == list(s.cycle_end_steps())
    with pytest.raises(Q0ConfigError, match="outside"):
        s.at(12)


def test_warmup_applies_once_at_the_start_of_the_run_only():
    s = CyclicSchedule(cycle_steps=10, n_cycles=2, warmup_steps=4)
    assert [s.at(i).lr for i in range(4)] == pytest.approx([0.25, 0.5 * (1 - 0.92 / 9), 0.75 * (1 - 2 * 0.92 / 9), 1 - 3 * 0.92 / 9])
    assert s.at(0).weight_decay == pytest.approx(0.7)  # the warm-up scales the lr, not the decay
    assert s.at(10).lr == 1.0


def test_lead_in_trains_at_cycle_start_values_then_cycles():
    s = CyclicSchedule(cycle_steps=3, n_cycles=2, lead_in_steps=4)
    assert s.total_steps == 10
    assert [s.cycle_index(i) for i in range(10)] == [None] * 4 + [0, 0, 0, 1, 1, 1]
    assert all(s.at(i).lr == 1.0 and s.at(i).weight_decay == pytest.approx(0.7) for i in range(4))
    assert [s.at(i).lr for i in range(4, 10)] == pytest.approx([1.0, 0.54, 0.08] * 2)
    assert s.cycle_end_steps() == (6, 9)


def test_packed_schedule_puts_four_short_cycles_in_the_final_fraction():
    s = packed_cycles_schedule(total_steps=103, n_cycles=4, packed_fraction=0.5)
    assert s.total_steps == 103 and s.n_cycles == 4
    assert s.cycle_steps == 12  # floor(51.5) = 51 steps, 12 per cycle; the 3 left over join the lead-in
    assert s.lead_in_steps == 55
    assert s.cycle_end_steps()[-1] == 102
    with pytest.raises(Q0ConfigError, match="at least 2"):
        packed_cycles_schedule(total_steps=10, n_cycles=4, packed_fraction=0.5)


def test_warmup_cosine_baseline_hand_values():
    s = WarmupDecaySchedule(total_steps=11, warmup_steps=0, final_lr_mult=0.1, shape="cosine")
    assert s.at(0).lr == pytest.approx(1.0)
    assert s.at(5).lr == pytest.approx(0.55)  # half-way: (1 + 0.1) / 2
    assert s.at(10).lr == pytest.approx(0.1)
    assert all(s.at(i).weight_decay == 1.0 for i in range(11))
    w = WarmupDecaySchedule(total_steps=14, warmup_steps=4, final_lr_mult=0.0, shape="linear")
    assert [w.at(i).lr for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [w.at(i).lr for i in range(4, 14)] == pytest.approx([1 - k / 9 for k in range(10)])


def test_steps_for_epochs_rounds_down_and_survives_float_noise():
    assert steps_for_epochs(2, 1000, 128) == 15  # 2000 / 128 = 15.6
    assert steps_for_epochs(0.3, 100, 10) == 3  # 0.3 * 100 / 10 is 2.9999999999999996 in floats
    for epochs in (0.1, 0.7, 1.3, 2.9, 7.77):
        steps = steps_for_epochs(epochs, 1009, 17)
        assert steps * 17 / 1009 <= epochs < (steps + 1) * 17 / 1009


@pytest.mark.parametrize("make", [
    lambda: CyclicSchedule(cycle_steps=1, n_cycles=2),
    lambda: CyclicSchedule(cycle_steps=4, n_cycles=0),
    lambda: CyclicSchedule(cycle_steps=4, n_cycles=1, lr_floor=1.0),
    lambda: CyclicSchedule(cycle_steps=4, n_cycles=1, wd_floor=1.5),
    lambda: WarmupDecaySchedule(total_steps=5, warmup_steps=6),
    lambda: WarmupDecaySchedule(total_steps=5, shape="step"),
])
def test_bad_schedules_are_clear_errors(make):
    with pytest.raises(Q0ConfigError):
        make()


def test_cycles_of_different_lengths_keep_their_own_sawtooth():
    s = CyclicSchedule(cycle_steps=(5, 3, 5), n_cycles=3, lr_floor=0.08)
    assert s.total_steps == 13 and s.cycle_end_steps() == (4, 7, 12)
    assert [s.cycle_index(i) for i in range(13)] == [0] * 5 + [1] * 3 + [2] * 5
    assert [s.at(i).lr for i in range(5, 8)] == pytest.approx([1.0, 0.54, 0.08])  # 3 steps: 0.92 / 2 per step
    assert [s.at(i).lr for i in range(8, 13)] == pytest.approx([1.0, 0.77, 0.54, 0.31, 0.08])
    with pytest.raises(Q0ConfigError, match="2 cycle lengths given for 3"):
        CyclicSchedule(cycle_steps=(5, 3), n_cycles=3)


def test_without_endpoint_the_floor_is_where_the_next_step_would_be():
    s = CyclicSchedule(cycle_steps=4, n_cycles=2, lr_floor=0.2, endpoint=False)
    # 1 - 0.8 * i / 4 for i = 0..3
    assert [s.at(i).lr for i in range(4)] == pytest.approx([1.0, 0.8, 0.6, 0.4])
    assert s.at(3).weight_decay == pytest.approx(0.7 + 0.3 * 0.6 / 0.8)


@pytest.mark.parametrize("n, expected", [
    (1, (8,)),
    (2, (4, 4)),  # amp = 0 at both ends
    (5, (4, 8, 8, 8, 4)),  # amp = 0, 0.5, 1, 0.5, 0
    (8, (4, 4, 8, 8, 8, 8, 4, 4)),  # amp = 1 - |2c/7 - 1|: 0, .29, .57, .86, .86, .57, .29, 0
])
def test_block_triangular_batches(n, expected):
    assert block_triangular_batches(n, 8, 4) == expected
    with pytest.raises(Q0ConfigError, match="must not exceed"):
        block_triangular_batches(4, 4, 8)
