"""The data server's training clock, on a hand-driven time source."""

from __future__ import annotations

from harness.server.clock import TrainClock


class Time:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_training_time_starts_with_the_first_batch_and_warm_up_is_counted_apart():
    t = Time()
    clock = TrainClock(limit_s=10.0, now=t)
    clock.connected()
    t.now += 30.0  # building and compiling the model
    assert clock.seconds() == 0.0 and not clock.started
    assert clock.admit()
    t.now += 4.0
    assert clock.seconds() == 4.0 and clock.warmup_seconds() == 30.0
    clock.stop()
    t.now += 50.0  # tearing down after the last rank ended is not training
    assert clock.seconds() == 4.0


def test_at_the_cap_batches_are_refused_and_the_grace_is_measured_from_it():
    t = Time()
    clock = TrainClock(limit_s=10.0, grace_s=2.0, now=t)
    assert clock.admit()
    t.now += 9.99
    assert clock.admit()
    t.now += 0.01
    assert not clock.admit()
    t.now += 2.0
    assert not clock.past_grace()
    t.now += 0.01
    assert clock.past_grace()
    clock.note_over_cap()
    assert abs(clock.over_cap_s - 2.01) < 1e-9


def test_a_resumed_run_counts_its_earlier_sessions_against_the_cap():
    t = Time()
    clock = TrainClock(limit_s=10.0, previous_s=8.0, now=t)
    assert clock.seconds() == 8.0
    assert clock.admit()
    t.now += 2.5
    assert not clock.admit()
    assert clock.session_seconds() == 2.5 and clock.seconds() == 10.5


def test_without_a_cap_the_clock_only_measures():
    t = Time()
    clock = TrainClock(now=t)
    assert clock.admit()
    t.now += 1e6
    assert clock.admit() and not clock.past_grace() and clock.seconds() == 1e6
