"""Slowrun's timed-track window subset, and the loss over it, against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.eval.timed_subset import subset_loss, subset_summary, timed_subset


def test_at_b_x_w_32_the_last_16_windows_of_the_permutation_are_dropped():
    subset = timed_subset(4880, 2048, batch_x_world=32)
    perm = np.random.RandomState(42).permutation(4880)
    assert len(subset.windows) == 4864 == 152 * 32
    assert set(range(4880)) - set(subset.windows.tolist()) == set(perm[-16:].tolist())


def test_at_b_x_w_8_every_window_is_scored():
    subset = timed_subset(4880, 2048, batch_x_world=8)
    assert sorted(subset.windows.tolist()) == list(range(4880))  # 4880 = 610 x 8


def test_tinys_256_windows_a_step_score_the_same_windows_as_32():
    assert set(timed_subset(4880, 2048, 256).windows.tolist()) == set(timed_subset(4880, 2048, 32).windows.tolist())


def test_the_eval_token_budget_also_bounds_the_steps():
    # 10M tokens // (32 x 2048) = 152 steps; with a budget of 1M tokens only 15 steps are scored
    assert len(timed_subset(4880, 2048, 32, eval_tokens=1_000_000).windows) == 15 * 32


def test_the_subset_loss_and_bits_per_byte_equal_a_direct_loop():
    rng = np.random.default_rng(0)
    n, t = 50, 4
    logp = -rng.uniform(0.1, 5.0, size=n * t)
    nbytes = rng.integers(0, 4, size=n * t)
    summary = subset_summary(logp, nbytes, n, seq_len=t, batch_x_world=8)
    chosen = np.random.RandomState(42).permutation(n)[:48]  # 6 whole steps of 8
    nats, bits_num, byte_count, targets = 0.0, 0.0, 0, 0
    for w in chosen:
        for j in range(t):
            value = -float(logp[w * t + j])
            nats += value
            targets += 1
            if nbytes[w * t + j] > 0:
                bits_num += value / math.log(2)
                byte_count += int(nbytes[w * t + j])
    assert summary["windows"] == 48 and summary["of"] == 50
    assert summary["val_loss"] == pytest.approx(nats / targets, rel=1e-12)
    assert summary["val_bpb"] == pytest.approx(bits_num / byte_count, rel=1e-12)
    assert subset_loss(logp, n, timed_subset(n, t, 8)) == pytest.approx(nats / targets, rel=1e-12)


def test_a_split_smaller_than_one_step_has_no_subset():
    assert subset_summary(np.zeros(10 * 4), None, 10, seq_len=4, batch_x_world=32) is None
