"""Loss arithmetic on cached log-probabilities, against brute force and hand-worked numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.eval.ensemble import bits_per_byte, ensemble_bits_per_byte, ensemble_nll, mean_nll, mixture_logp
from harness.errors import SlowrunError


def random_logps(m: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.log(rng.dirichlet(np.ones(50), size=(m, n))[..., 0]).astype(np.float32)


def test_mean_nll_is_the_float64_average():
    logp = random_logps(1, 1000)[0]
    assert mean_nll(logp) == pytest.approx(-math.fsum(float(x) for x in logp) / 1000, rel=1e-12)
    assert mean_nll(logp.reshape(10, 100)) == pytest.approx(mean_nll(logp), rel=1e-12)


def test_mixture_equals_probability_space_brute_force():
    logps = random_logps(4, 300, seed=3)
    weights = [0.1, 0.0, 0.6, 0.3]
    brute = np.log(sum(w * np.exp(logps[i].astype(np.float64)) for i, w in enumerate(weights)))
    np.testing.assert_allclose(mixture_logp(logps, weights), brute, rtol=1e-12)
    np.testing.assert_allclose(mixture_logp(list(logps), weights), brute, rtol=1e-12)
    assert ensemble_nll(logps, weights) == pytest.approx(-brute.mean(), rel=1e-12)


def test_weights_are_normalised_and_member_shape_is_kept():
    logps = random_logps(2, 24, seed=4).reshape(2, 4, 6)
    out = mixture_logp(logps, [3.0, 1.0])
    assert out.shape == (4, 6)
    brute = np.log(0.75 * np.exp(logps[0].astype(np.float64)) + 0.25 * np.exp(logps[1].astype(np.float64)))
    np.testing.assert_allclose(out, brute, rtol=1e-12)


def test_mixture_is_stable_where_probabilities_underflow():
    a = np.array([-1000.0, -2000.0], dtype=np.float32)
    b = np.array([-1001.0, -2000.0], dtype=np.float32)
    out = mixture_logp([a, b], [0.5, 0.5])
    # log(0.5 e^-1000 + 0.5 e^-1001) = -1000 + log(0.5 (1 + e^-1)); the second token mixes equals.
    assert out[0] == pytest.approx(-1000.0 + math.log(0.5 * (1.0 + math.exp(-1.0))), abs=1e-9)
    assert out[1] == pytest.approx(-2000.0, abs=1e-9)
    assert np.all(np.isfinite(out))


def test_zero_weight_members_are_skipped_and_impossible_tokens_stay_impossible():
    good = np.array([-1.0, -2.0], dtype=np.float32)
    broken = np.array([-np.inf, np.nan], dtype=np.float32)
    np.testing.assert_allclose(mixture_logp([good, broken], [1.0, 0.0]), good, rtol=1e-12)
    both_zero = mixture_logp([np.array([-np.inf]), np.array([-np.inf])], [0.5, 0.5])
    assert both_zero[0] == -np.inf


def test_bits_per_byte_is_slowruns_the_loss_on_bos_targets_is_left_out():
    # Targets: BOS, "Hi" (2 bytes), " there" (6), BOS, "é" (2 UTF-8 bytes).
    # Losses of 3, 1, 2, 4, 2 bits. Slowrun: sum(loss x [bytes > 0]) / sum(bytes) = (1 + 2 + 2) / 10 = 0.5.
    # (Counting the BOS losses too would give 12/10 = 1.2; giving BOS one byte would give 12/12 = 1.0.)
    logp = -np.array([3, 1, 2, 4, 2], dtype=np.float64) * math.log(2)
    nbytes = np.array([0, 2, 6, 0, 2])
    assert bits_per_byte(logp.astype(np.float32), nbytes) == pytest.approx(0.5, rel=1e-6)
    assert ensemble_bits_per_byte([logp, logp], [0.5, 0.5], nbytes) == pytest.approx(0.5, rel=1e-12)


def test_bad_inputs_are_refused():
    logp = np.array([-1.0, -2.0])
    with pytest.raises(SlowrunError, match="align"):
        bits_per_byte(logp, np.array([1, 2, 3]))
    with pytest.raises(SlowrunError, match="zero bytes"):
        bits_per_byte(logp, np.array([0, 0]))
    with pytest.raises(SlowrunError, match="negative"):
        bits_per_byte(logp, np.array([3, -1]))
    with pytest.raises(SlowrunError, match="integer"):
        bits_per_byte(logp, np.array([1.0, 2.0]))
    with pytest.raises(SlowrunError, match="empty"):
        mean_nll(np.array([]))
    with pytest.raises(SlowrunError, match="NaN"):
        mean_nll(np.array([-1.0, np.nan]))
    with pytest.raises(SlowrunError, match="2 weights for 3"):
        mixture_logp([logp, logp, logp], [0.5, 0.5])
    with pytest.raises(SlowrunError, match="non-negative"):
        mixture_logp([logp, logp], [1.5, -0.5])
    with pytest.raises(SlowrunError, match="all be zero"):
        mixture_logp([logp, logp], [0.0, 0.0])
    with pytest.raises(SlowrunError, match="same targets"):
        mixture_logp([logp, logp[:1]], [0.5, 0.5])
    with pytest.raises(SlowrunError, match="at least one"):
        mixture_logp([], [])


def test_huge_weights_are_scaled_before_they_are_summed():
    """1e308 + 1e308 overflows: divided by that sum every weight was 0. The data server's set_ensemble and the
    mixture share this one normalisation."""
    from harness.eval.ensemble import normalise_weights
    from harness.server.dataserver import normalise_weights as normalise_request

    assert normalise_weights([1e308, 1e308, 0.0], 3).tolist() == [0.5, 0.5, 0.0]
    assert normalise_request({"a": 1e308, "b": 3e307}) == pytest.approx({"a": 1 / 1.3, "b": 0.3 / 1.3})
    assert normalise_weights([1.0, 3.0], 2).tolist() == [0.25, 0.75]
