"""The synthetic language: its stated probabilities are the ones it samples from."""

from __future__ import annotations

import itertools
import math

import numpy as np

from harness.data.prepare import prepare_track
from harness.data.store import TokenStore
from harness.data.synthetic import SyntheticLanguage
from harness.rules.tracks import BUILTIN_TRACKS

TINY = SyntheticLanguage(seed=3, vocab_size=5, n_states=2, transition_concentration=0.5,
                         emission_concentration=0.5, mean_doc_tokens=4.0)


def brute_force_prefix_probability(lang: SyntheticLanguage, doc: list[int]) -> float:
    """P(x1..xn and the document continues past each of the first n-1 tokens), by summing over all state paths."""
    pi, a, b = lang.tables
    total = 0.0
    for path in itertools.product(range(lang.n_states), repeat=len(doc)):
        p = pi[path[0]] * b[path[0], doc[0]]
        for t in range(1, len(doc)):
            p *= (1 - lang.p_end) * a[path[t - 1], path[t]] * b[path[t], doc[t]]
        total += p
    return total


def test_true_logprobs_match_brute_force_enumeration():
    bos = TINY.bos_id
    docs = [[0, 2, 1, 3], [3, 3], [1]]
    stream = [bos] + docs[0] + [bos] + docs[1] + [bos] + docs[2]
    logp = TINY.true_logprobs(np.array(stream))
    expected = []
    for doc_index, doc in enumerate(docs):
        for t in range(1, len(doc) + 1):
            cond = brute_force_prefix_probability(TINY, doc[:t]) / (
                brute_force_prefix_probability(TINY, doc[: t - 1]) if t > 1 else 1.0)
            expected.append(math.log(cond))
        if doc_index < len(docs) - 1:
            expected.append(math.log(TINY.p_end))  # the BOS that follows the document
    np.testing.assert_allclose(logp, expected, rtol=1e-10)


def test_samples_follow_the_stated_distribution():
    lang = SyntheticLanguage(seed=1, vocab_size=6, n_states=3, mean_doc_tokens=10.0)
    pi, _, b = lang.tables
    docs = list(itertools.islice(lang.documents(stream_seed=4), 6000))
    lengths = np.array([len(d) for d in docs])
    # lengths are geometric with mean 1 / p_end
    assert abs(lengths.mean() - 10.0) < 4 * lengths.std() / math.sqrt(len(docs))
    first = np.bincount([d[0] for d in docs], minlength=5) / len(docs)
    expected_first = pi @ b
    np.testing.assert_allclose(first, expected_first, atol=4 * math.sqrt(0.25 / len(docs)))


def test_model_free_losses_bracket_the_stated_best(tmp_path):
    """The language's own probabilities beat a unigram fit to the same validation data."""
    result = prepare_track(BUILTIN_TRACKS["synthetic"], tmp_path / "syn", progress=False)
    best = result.manifest["best_val_loss"]
    val = np.asarray(TokenStore.open(tmp_path / "syn", "val").windows(128))
    targets = val[:, 1:].reshape(-1)
    freq = np.bincount(targets, minlength=512) / targets.size
    unigram_in_sample = -np.mean(np.log(freq[targets]))
    assert 0.5 < best < unigram_in_sample - 0.5
    assert result.manifest["tokenizer"]["bos_id"] == 511


def test_same_seed_same_language_other_seed_other_language():
    a = SyntheticLanguage(seed=0).tables[1]
    assert np.array_equal(a, SyntheticLanguage(seed=0).tables[1])
    assert not np.allclose(a, SyntheticLanguage(seed=1).tables[1])
