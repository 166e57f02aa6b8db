"""The naive ensemble's member count: split the budget only when every member reaches single-model saturation."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from q0_reference.errors import Q0ConfigError
from q0_reference.planner import naive_ensemble_members
from tests.q0.fakes import FakeContext

METHOD_TOML = Path(__file__).resolve().parents[2] / "submissions" / "naive_ensemble" / "method.toml"


@pytest.mark.parametrize("budget, saturation, most, members, each", [
    (4, 8, 4, 1, 4.0),     # below saturation: one model for the whole budget, not four 1-epoch models
    (8, 8, 4, 1, 8.0),     # exactly one saturated member
    (12, 8, 4, 1, 12.0),   # 12 / 8 = 1.5: a second member would get 6 epochs
    (16, 8, 4, 2, 8.0),
    (24, 8, 4, 3, 8.0),
    (32, 8, 4, 4, 8.0),
    (64, 8, 4, 4, 16.0),   # capped at the most members: each trains longer
    (4, 1, 4, 4, 1.0),     # the older rule (one epoch each) is the special case saturation = 1
    (2.5, 1, 4, 2, 1.25),
    (0.5, 8, 4, 1, 0.5),   # a budget under one epoch is still one member
    (24, 8.0 - 1e-12, 4, 3, 8.0),  # rounding in the division does not lose a member
])
def test_member_count_by_hand(budget, saturation, most, members, each):
    p = naive_ensemble_members(budget, saturation, most)
    assert p.members == members and p.epochs_per_member == pytest.approx(each)
    assert p.members * p.epochs_per_member == pytest.approx(budget)


def test_the_rule_and_its_numbers_are_spelled_out():
    p = naive_ensemble_members(4.0, 8.0, 4)
    assert p.rule() == ("members = min(4, max(1, floor(4 budget epochs / 8 epochs where a single model stops "
                        "improving))) = 1, 4 epochs each")
    assert p.to_meta() == {"members": 1, "epochs_per_member": 4.0, "saturation_epochs": 8.0, "max_members": 4,
                           "rule": p.rule()}


@pytest.mark.parametrize("args, message", [((4, 0, 4), "member_min_epochs"), ((4, float("nan"), 4), "member_min_epochs"),
                                           ((4, 8, 0), "positive integer"), ((0, 8, 4), "epoch budget")])
def test_bad_settings_are_refused(args, message):
    with pytest.raises(Q0ConfigError, match=message):
        naive_ensemble_members(*args)


def method_defaults() -> dict:
    return tomllib.loads(METHOD_TOML.read_text(encoding="utf-8"))["hparams"]


@pytest.mark.parametrize("budget, streams", [(4.0, {"member0"}), (16.0, {"member0", "member1"})])
def test_the_submission_trains_saturated_members_and_says_why(budget, streams):
    """With the method's own defaults (the small tracks' setting), a 4-epoch budget trains one 4-epoch
    model instead of four 1-epoch ones; every snapshot's meta carries the rule with its numbers."""
    from q0_reference.recipes import Recipe, train_naive_ensemble

    defaults = method_defaults()
    assert (defaults["members"], defaults["member_min_epochs"]) == (4, 8.0)
    recipe = Recipe.from_hparams(dict(d_model=16, n_layer=1, n_head=2, batch_size=4, compile="off", autocast="fp32"))
    ctx = FakeContext(budget=budget, epoch_tokens=16 * 4 * 2)
    train_naive_ensemble(ctx, recipe, members=defaults["members"], ema_decay=defaults["ema_decay"],
                         member_min_epochs=defaults["member_min_epochs"])
    assert {stream for stream, _ in ctx.streams} == streams
    assert ctx.epochs == pytest.approx(budget)
    expected = naive_ensemble_members(budget, 8.0, 4).rule()
    assert ctx.snapshots and all(meta["member_choice"] == expected for _, _, meta in ctx.snapshots)
    assert [entry for entry in ctx.logs if entry.get("event") == "members"][0]["members"] == len(streams)
