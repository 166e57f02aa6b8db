"""Checkpoint policy and content: when a checkpoint is taken, who writes what, and that resuming from any
checkpoint reproduces the uninterrupted run exactly (teacher re-derived, perturbation replayed)."""

import pytest
import torch

from q0_reference import checkpointing
from q0_reference.checkpointing import CheckpointClock, CheckpointPolicy
from q0_reference.errors import Q0ConfigError
from q0_reference.placement import Placement
from q0_reference.recipes import Q0Settings, Recipe, train_q0, train_single
from harness.common.distributed import RankGroup
from tests.q0.fakes import FakeContext

TINY = dict(d_model=32, n_layer=1, n_head=2, batch_size=4, warmup_steps=2, log_every=1, compile="off",
            autocast="fp32")


def q0_settings(**overrides):
    hp = {"perturb_start": 0.25, "perturb_end": 0.05, **overrides}
    return Q0Settings.from_hparams(hp)


def run_q0(hparams, settings, resume=None, budget=8.0):
    ctx = FakeContext(budget=budget, seed=2, resume=resume)
    train_q0(ctx, Recipe.from_hparams({**TINY, **hparams}), settings)
    return ctx


def losses(ctx):
    return [entry["loss"] for entry in ctx.logs if "loss" in entry]


def test_policy_counts_offers_and_the_clock():
    now = [0.0]
    clock = CheckpointClock(CheckpointPolicy(every=3), clock=lambda: now[0])
    assert [clock.due() for _ in range(7)] == [False, False, True, False, False, True, False]
    clock = CheckpointClock(CheckpointPolicy(every=0, minutes=30.0), clock=lambda: now[0])
    assert not clock.due()
    now[0] = 30 * 60.0
    assert clock.due()
    clock.taken()
    now[0] += 60.0
    assert not clock.due()
    assert not CheckpointClock(CheckpointPolicy(every=0, minutes=0.0)).due()
    with pytest.raises(Q0ConfigError, match="checkpoint_every"):
        CheckpointPolicy(every=-1)
    assert CheckpointPolicy.from_hparams({"checkpoint_every": 4, "checkpoint_minutes": 15.0}) == CheckpointPolicy(4, 15.0)


def test_q0_checkpoints_hold_no_teacher_and_resume_exactly_from_each_of_them():
    settings = q0_settings(perturb_progress="trajectory")
    straight = run_q0({}, settings)
    mid = [c for c in straight.checkpoints if c["state"].get("trajectory") is not None]
    assert len(mid) == 3  # 4 cycles: after cycles 0, 1 and 2 (the last cycle end is the "done" checkpoint)
    for record in mid:
        state = record["state"]
        assert "teacher" not in state and state["perturb_pending"] is True
        assert set(state) >= {"model", "optimizer", "generator", "step"}
    for record in mid:
        resumed = run_q0({}, settings, resume=record)
        assert losses(resumed) == losses(straight)[len(losses(straight)) - len(losses(resumed)):]
        done = record["snapshots"]
        assert [t for t, _, _ in resumed.snapshots] == [t for t, _, _ in straight.snapshots[done:]]
        for (tag, weights, _), (_, expected, _) in zip(resumed.snapshots, straight.snapshots[done:]):
            for name in expected:
                assert torch.equal(weights[name], expected[name]), (tag, name)


def test_checkpoint_every_two_cycles_writes_half_as_often_and_still_resumes_exactly():
    settings = q0_settings()
    straight = run_q0({"checkpoint_every": 2}, settings)
    mid = [c for c in straight.checkpoints if c["state"].get("trajectory") is not None]
    assert [c["state"]["step"] for c in mid] == [32]  # 4 cycles of 16 steps: after the 2nd (the 4th is the end)
    resumed = run_q0({"checkpoint_every": 2}, settings, resume=mid[0])
    for (_, weights, _), (_, expected, _) in zip(resumed.snapshots, straight.snapshots[mid[0]["snapshots"]:]):
        assert all(torch.equal(weights[n], expected[n]) for n in expected)


def test_single_model_resumes_exactly():
    recipe = Recipe.from_hparams({**TINY, "checkpoint_every": 1})
    straight = FakeContext(budget=3.0, seed=1)
    train_single(straight, recipe, epochs=3.0, seed=1, snapshot_every_epochs=1.0)
    first = straight.checkpoints[0]
    resumed = FakeContext(budget=3.0, seed=1, resume=first)
    train_single(resumed, recipe, epochs=3.0, seed=1, snapshot_every_epochs=1.0, resume=resumed.resume_state())
    assert losses(resumed) == losses(straight)[-len(losses(resumed)):]
    for (_, weights, _), (_, expected, _) in zip(resumed.snapshots, straight.snapshots[1:]):
        assert all(torch.equal(weights[n], expected[n]) for n in expected)


def test_only_the_leader_writes_weights_and_optimizer_state():
    written = []

    class Sink:
        def checkpoint(self, state):
            written.append(state)

    shared = {"model": {"w": torch.ones(2)}, "optimizer": {"state": {}}}
    for rank in (0, 1):
        placement = Placement(0, 1, RankGroup(0, (0, 1), rank, None))
        checkpointing.write(Sink(), placement, {"step": 5}, shared)
    leader, follower = written
    assert leader["step"] == follower["step"] == 5
    assert "model" in leader and not leader["shared_by_leader"]
    assert "model" not in follower and "optimizer" not in follower and follower["shared_by_leader"]
