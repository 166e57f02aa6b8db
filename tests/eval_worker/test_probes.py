"""The probes on in-process models: causal and stateless ones pass, the others fail with the reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.eval.logprobs import token_logprobs
from harness.eval.probes import (FLOAT32_TOLERANCE, HALF_TOLERANCE, CausalityProbe, ProbedModel, ProbeFailed,
                            ProbeSettings, logprob_tolerance, statelessness_probe)
from tests.eval_worker.conftest import VOCAB

SETTINGS = ProbeSettings(seed=7)


def windows(n=40, steps=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(n, steps + 1)).astype(np.uint16)


def score_with_probes(model, data: np.ndarray, batch_size: int = 8, settings: ProbeSettings = SETTINGS):
    rng = settings.rng(0, 1)
    calls = -(-len(data) // batch_size)
    probed = ProbedModel(model, CausalityProbe(data, batch_size, settings, rng), calls, "cpu", rng)
    scored = token_logprobs(probed, data, batch_size)
    probed.finish()
    statelessness_probe(model, data, scored, batch_size, "cpu", settings, settings.rng(0, 2))
    return probed, scored


class Recorder(torch.nn.Module):
    """Wraps a model and keeps the shape of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.shapes = inner, []

    def forward(self, idx):
        self.shapes.append(tuple(idx.shape))
        return self.inner(idx)


def test_a_causal_stateless_model_passes_and_its_scores_are_untouched(method_dir):
    import mymodel

    torch.manual_seed(0)
    model = Recorder(mymodel.Causal(VOCAB).eval())
    data = windows()
    probed, scored = score_with_probes(model, data)
    np.testing.assert_array_equal(scored, token_logprobs(model.inner, data, 8))
    # probe calls look like scoring calls: the same batch size, and slipped in between them
    assert set(model.shapes) == {(8, 32)}
    assert len(model.shapes) > 5 + 1  # 5 scoring calls, the causality probe's, the statelessness probe's


def test_probe_batches_are_spread_over_the_scoring_calls(method_dir):
    import mymodel

    data = windows(n=400)
    model = Recorder(mymodel.Causal(VOCAB).eval())
    settings = ProbeSettings(causal_windows=8, cuts_per_window=3, seed=3)  # 32 probe rows: 4 batches of 8
    rng = settings.rng(0, 1)
    probe = CausalityProbe(data, 8, settings, rng)
    assert len(probe.pending) == 4
    probed = ProbedModel(model, probe, 50, "cpu", rng)
    assert len(probed.schedule) == 4 and len(set(probed.schedule)) > 1 and max(probed.schedule) < 50
    token_logprobs(probed, data, 8)
    assert not probe.pending
    probed.finish()


def test_a_model_that_looks_at_the_next_token_fails_causality(method_dir):
    import mymodel

    with pytest.raises(ProbeFailed, match="causality probe failed: replacing the tokens after position"):
        score_with_probes(mymodel.PeeksAhead(VOCAB).eval(), windows())


def test_a_model_that_looks_at_the_next_row_fails_statelessness(method_dir):
    import mymodel

    class NextRow(mymodel.Causal):
        """Causal within a row, but each row's last logit borrows the first token of the next row (in scoring
        that is the text that follows)."""

        def forward(self, idx):
            logits = super().forward(idx).clone()
            logits[:-1, -1, :] += 5.0 * self.emb(idx[1:, 0]) @ self.emb.weight.T
            return logits

    with pytest.raises(ProbeFailed, match="statelessness probe failed"):
        score_with_probes(NextRow(VOCAB).eval(), windows())


def test_a_model_that_remembers_windows_fails_statelessness(method_dir):
    import mymodel

    with pytest.raises(ProbeFailed, match="statelessness probe failed: validation window"):
        score_with_probes(mymodel.Remembers(VOCAB).eval(), windows())


def test_tolerances_are_tight_in_float32_and_looser_under_bf16_autocast():
    assert logprob_tolerance("float32") == FLOAT32_TOLERANCE == 1e-5
    assert logprob_tolerance("bfloat16") == HALF_TOLERANCE == 0.03
    assert ProbeSettings().tolerance == 1e-5 and ProbeSettings(eval_dtype="bfloat16").tolerance == 0.03
    with pytest.raises(ValueError):
        logprob_tolerance("float16")


def test_half_precision_logits_get_no_slack_on_a_float32_evaluation(method_dir):
    """The tolerance is the evaluation's, not the model's: a model that returns float16 logits and mixes
    a little of the next token into them (0.022 of a logit, inside float16's old 0.03 of slack) fails."""
    import mymodel

    class HalfPeek(mymodel.Causal):
        def forward(self, idx):
            logits = super().forward(idx)
            peek = torch.zeros_like(logits)
            peek[:, :-1].scatter_(-1, idx[:, 1:, None], 0.022)
            return (logits + peek).half()

    with pytest.raises(ProbeFailed, match=r"tolerance 1e-05"):
        score_with_probes(HalfPeek(VOCAB).eval(), windows())


def test_a_change_within_tolerance_passes_and_one_beyond_fails(method_dir):
    import mymodel

    class Jitter(mymodel.Causal):
        """Adds noise of a given size to the logits of every call after the first few."""

        def __init__(self, size):
            super().__init__(VOCAB)
            self.size, self.calls = size, 0

        def forward(self, idx):
            self.calls += 1
            logits = super().forward(idx)
            noise = torch.rand(logits.shape, generator=torch.Generator().manual_seed(self.calls)) * self.size
            return logits + noise

    torch.manual_seed(0)
    score_with_probes(Jitter(1e-6).eval(), windows())  # |change in log p| <= 2e-6 < 1e-5
    with pytest.raises(ProbeFailed, match=r"tolerance 1e-05"):
        score_with_probes(Jitter(1e-3).eval(), windows())
