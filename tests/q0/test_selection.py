"""The method's own final predictor: mixture weights fitted on fitness scores, then the top K."""

import math

import pytest
import torch

from q0_reference.errors import Q0ConfigError
from q0_reference.model import build_gpt
from q0_reference.recipes import Q0Settings, Recipe, train_q0
from q0_reference.selection import fit_mixture, fitness_slice, select_top_k, target_logprobs, top_k_weights
from tests.q0.fakes import FakeContext


def test_two_member_optimum_matches_the_hand_derivation():
    # tokens a: (0.9, 0.1), b: (0.2, 0.6). f(w) = -1/2 [log(0.1 + 0.8 w) + log(0.6 - 0.4 w)];
    # f'(w) = 0 gives 0.8 (0.6 - 0.4 w) = 0.4 (0.1 + 0.8 w), so w = 0.44 / 0.64 = 0.6875
    logps = torch.tensor([[0.9, 0.2], [0.1, 0.6]]).log()
    w = fit_mixture(logps, tol=1e-12)
    assert w[0].item() == pytest.approx(0.6875, abs=1e-6) and w.sum().item() == pytest.approx(1.0)


def test_a_member_that_is_better_everywhere_takes_all_the_weight():
    better = torch.tensor([0.5, 0.4, 0.7, 0.9]).log()
    worse = torch.tensor([0.1, 0.2, 0.3, 0.5]).log()
    w = fit_mixture(torch.stack([worse, better]), tol=1e-9)
    assert w[1].item() > 0.999


def test_duplicated_members_share_their_weight_and_the_nll_is_the_optimum():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 50, generator=g) * 0.9 + 0.05
    w = fit_mixture(probs.log(), tol=1e-10)
    nll = -torch.log((w[:, None] * probs.double()).sum(0)).mean().item()
    for other in (torch.tensor([1 / 3, 1 / 3, 1 / 3]), torch.tensor([0.6, 0.2, 0.2]), torch.tensor([0.1, 0.1, 0.8])):
        assert nll <= -torch.log((other[:, None] * probs).sum(0)).mean().item() + 1e-9


def test_top_k_keeps_the_largest_weights_renormalised_and_breaks_ties_by_order():
    w = torch.tensor([0.1, 0.4, 0.1, 0.3, 0.1])
    kept = top_k_weights(w, 3)
    assert kept.tolist() == pytest.approx([0.1 / 0.8, 0.4 / 0.8, 0.0, 0.3 / 0.8, 0.0])
    assert select_top_k({"b": torch.tensor([-1.0, -2.0]), "a": torch.tensor([-3.0, -3.0])}, 1) == {"b": 1.0}
    with pytest.raises(Q0ConfigError, match="K >= 1"):
        top_k_weights(w, 0)


def test_fitness_slice_takes_whole_windows_and_refuses_a_short_track():
    windows = torch.arange(10 * 17).reshape(10, 17)
    assert fitness_slice(windows, 50, 16).shape == (3, 17)  # 50 // 16 windows of 16 targets
    with pytest.raises(Q0ConfigError, match="carves only 10"):
        fitness_slice(windows, 16 * 11, 16)
    assert 132_000 // 2048 == 64  # PR #90's slice at the FineWeb window: 64 windows, 131,072 targets


def test_target_logprobs_are_the_log_softmax_at_the_targets():
    torch.manual_seed(0)
    model = build_gpt(dict(vocab_size=32, seq_len=8, n_layer=1, n_head=2, d_model=16))
    windows = torch.randint(0, 32, (5, 9))
    got = target_logprobs(model, windows, batch_size=2)
    assert model.training  # scored in eval mode, handed back in the mode it came in
    with torch.no_grad():
        logits = model.eval()(windows[:, :-1])
    expected = torch.log_softmax(logits, -1).gather(-1, windows[:, 1:, None]).reshape(-1)
    torch.testing.assert_close(got, expected)


def test_q0_with_top_k_sets_an_ensemble_of_k_scored_snapshots():
    ctx = FakeContext(budget=8.0, seq_len=16)
    recipe = Recipe.from_hparams(dict(d_model=32, n_layer=1, n_head=2, batch_size=4, compile="off", autocast="fp32"))
    settings = Q0Settings(n_trajectories=2, fitness_tokens=64, final_top_k=3)
    train_q0(ctx, recipe, settings)
    assert isinstance(ctx.ensemble, dict) and len(ctx.ensemble) <= 3
    assert set(ctx.ensemble) <= set(ctx.snapshot_tags()) and math.isclose(sum(ctx.ensemble.values()), 1.0)
    assert any(entry.get("event") == "selection" and entry["candidates"] == 4 for entry in ctx.logs)
    with pytest.raises(Q0ConfigError, match="fitness_tokens"):
        Q0Settings(final_top_k=3)
