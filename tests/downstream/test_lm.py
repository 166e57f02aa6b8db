"""MixtureLM against an independent float64 computation from the models' logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance

from harness.downstream.lm import MixtureLM
from harness.downstream.mixing import mixture_scores
from harness.errors import SlowrunError
from tests.downstream.conftest import (SEQ_LEN, brute_force_score, greedy_continuation, make_model, token_pair,
                                       window_score)

TOL = 1e-4  # float32 forward passes over differently padded batches; the mixing itself is float64

TEXT_REQUESTS = [
    ("Question: What force pulls objects toward the ground?\nAnswer:", " gravity"),
    ("Question: What force pulls objects toward the ground?\nAnswer:", " magnetism"),
    ("Question: Which gas do plants take in from the air?\nAnswer: ", "carbon dioxide"),  # trailing space
    ("", "The water cycle"),  # empty context: conditioned on BOS alone
    ("Metals conduct heat", " and electricity better than wood or plastic, and much better than air."),  # > seq_len
    ("To open a stuck jar lid, run it under hot water for a minute. " * 3, "Then twist."),  # truncated
    ("A", " balanced diet"),
    ("\nQuestion: Which gas do plants take in?\nAnswer:", " oxygen"),  # SciQ row without support
]


def instances(pairs):
    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]


def test_text_requests_equal_float64_scores_of_the_model(tokenizer, model):
    lm = MixtureLM([model], tokenizer=tokenizer, seq_len=SEQ_LEN, batch_size=3)
    got = lm.loglikelihood(instances(TEXT_REQUESTS))
    assert len(got) == len(TEXT_REQUESTS)
    for (context, continuation), (logp, greedy) in zip(TEXT_REQUESTS, got):
        ctx_ids, cont_ids = token_pair(tokenizer, context, continuation)
        expected, expected_greedy = brute_force_score([model], [1.0], ctx_ids, cont_ids, SEQ_LEN)
        assert logp == pytest.approx(expected, abs=TOL)
        assert greedy == expected_greedy
    # Requests that differ only in the continuation share a context but not a score.
    assert got[0][0] != got[1][0]


def test_greedy_flag_follows_the_argmax(tokenizer, model):
    lm = MixtureLM([model], tokenizer=tokenizer, seq_len=SEQ_LEN, batch_size=2)
    context = [tokenizer.bos_id] + tokenizer.encode_batch(["Metals conduct heat"])[0]
    greedy = greedy_continuation([model], [1.0], context, 4)
    changed = greedy[:-1] + [(greedy[-1] + 1) % tokenizer.vocab_size]
    results = lm._loglikelihood_tokens([(("", ""), context, greedy), (("", ""), context, changed),
                                         (("", ""), context, greedy[:1])])
    assert [flag for _, flag in results] == [True, False, True]
    for (logp, _), cont in zip(results, (greedy, changed, greedy[:1])):
        assert logp == pytest.approx(brute_force_score([model], [1.0], context, cont, SEQ_LEN)[0], abs=TOL)
    assert results[0][0] > results[1][0]


def test_ensemble_of_one_is_the_single_model_exactly(tokenizer, model, other_model):
    requests = instances(TEXT_REQUESTS)
    single = MixtureLM([model], tokenizer=tokenizer, seq_len=SEQ_LEN, batch_size=4).loglikelihood(requests)
    weighted = MixtureLM([model], [0.3], tokenizer=tokenizer, seq_len=SEQ_LEN, batch_size=4).loglikelihood(requests)
    zero_other = MixtureLM([other_model, model], [0.0, 2.0], tokenizer=tokenizer, seq_len=SEQ_LEN,
                           batch_size=4).loglikelihood(requests)
    assert single == weighted == zero_other


def test_two_member_ensemble_equals_the_probability_mixture(tokenizer, model, other_model):
    weights = [0.3, 0.7]
    members = [model, other_model]
    lm = MixtureLM(members, weights, tokenizer=tokenizer, seq_len=SEQ_LEN, batch_size=3)
    got = lm.loglikelihood(instances(TEXT_REQUESTS))
    for (context, continuation), (logp, greedy) in zip(TEXT_REQUESTS, got):
        ctx_ids, cont_ids = token_pair(tokenizer, context, continuation)
        expected, expected_greedy = brute_force_score(members, weights, ctx_ids, cont_ids, SEQ_LEN)
        assert logp == pytest.approx(expected, abs=TOL)
        assert greedy == expected_greedy


def test_ensemble_greedy_is_the_argmax_of_the_mixture_not_of_a_member(tokenizer, model, other_model):
    weights = [0.5, 0.5]
    members = [model, other_model]
    found = None
    for text in ("Metals", "The water", "Question:", "A balanced", "To open", "gravity", "plants"):
        context = [tokenizer.bos_id] + tokenizer.encode_batch([text])[0]
        mixed = greedy_continuation(members, weights, context, 1)
        first = greedy_continuation([model], [1.0], context, 1)
        if mixed != first:
            found = (context, mixed)
            break
    assert found is not None, "the two random members should disagree with their mixture somewhere"
    context, mixed = found
    request = [(("", ""), context, mixed)]
    ensemble = MixtureLM(members, weights, tokenizer=tokenizer, seq_len=SEQ_LEN)._loglikelihood_tokens(request)
    alone = MixtureLM([model], tokenizer=tokenizer, seq_len=SEQ_LEN)._loglikelihood_tokens(request)
    assert ensemble[0][1] is True and alone[0][1] is False


def test_context_is_cut_from_the_left_at_seq_len(tokenizer):
    seq_len = 8
    short_model = make_model(tokenizer.vocab_size, seed=3, seq_len=seq_len)  # refuses inputs over 8 tokens
    lm = MixtureLM([short_model], tokenizer=tokenizer, seq_len=seq_len, batch_size=2)
    context = [tokenizer.bos_id] + tokenizer.encode_batch(["To open a stuck jar lid, run it under hot water"])[0]
    assert len(context) > 3 * seq_len
    for n_cont in (1, 3, seq_len):
        continuation = tokenizer.encode_batch([" for a minute, then twist it open."])[0][:n_cont]
        assert len(continuation) == n_cont
        (logp, greedy), = lm._loglikelihood_tokens([(("", ""), context, continuation)])
        # Only the last seq_len inputs matter: the same score with everything before them replaced.
        kept = (context + continuation)[-(seq_len + 1):][: seq_len + 1 - n_cont]
        assert logp == pytest.approx(brute_force_score([short_model], [1.0], kept, continuation, seq_len)[0], abs=TOL)
        other_prefix = [tokenizer.bos_id] * 5 + kept
        (same, _), = lm._loglikelihood_tokens([(("", ""), other_prefix, continuation)])
        assert same == pytest.approx(logp, abs=TOL)
    # A continuation longer than the window is scored piece by piece, each piece with maximal context.
    too_long = tokenizer.encode_batch([" for a minute, then twist it open and pour it into a bowl."])[0]
    assert len(too_long) > 2 * seq_len
    (logp, _), = lm._loglikelihood_tokens([(("", ""), context, too_long)])
    expected = sum(window_score([short_model], [1.0], context + too_long[:start], too_long[start : start + seq_len],
                                seq_len)[0] for start in range(0, len(too_long), seq_len))
    assert logp == pytest.approx(expected, abs=TOL)


def test_input_tokens_count_the_unpadded_window_of_every_piece(tokenizer, model):
    lm = MixtureLM([model, model], tokenizer=tokenizer, seq_len=SEQ_LEN, batch_size=2)
    short = ([tokenizer.bos_id, 5, 6], [7, 8])  # 4 inputs
    long = ([tokenizer.bos_id] + [9] * 40, [10] * 30)  # two pieces, each a full window of SEQ_LEN inputs
    lm._loglikelihood_tokens([(("", ""), *short), (("", ""), *long)])
    assert lm.input_tokens == 4 + 2 * SEQ_LEN


def test_rolling_loglikelihood_scores_every_token_in_disjoint_windows(tokenizer):
    seq_len = 8
    short_model = make_model(tokenizer.vocab_size, seed=4, seq_len=seq_len)
    lm = MixtureLM([short_model], tokenizer=tokenizer, seq_len=seq_len, batch_size=3)
    texts = ["Metals conduct", "The water cycle moves water between the oceans, the air and the land."]
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=0) for t in texts]
    got = lm.loglikelihood_rolling(requests)
    for text, value in zip(texts, got):
        tokens = tokenizer.encode_batch([text])[0]
        expected = 0.0
        for start in range(0, len(tokens), seq_len):  # each chunk predicted with as much context as fits
            chunk = tokens[start : start + seq_len]
            expected += window_score([short_model], [1.0], [tokenizer.bos_id] + tokens[:start], chunk, seq_len)[0]
        assert value == pytest.approx(expected, abs=TOL)
    assert len(tokenizer.encode_batch([texts[1]])[0]) > 2 * seq_len


def test_generation_is_refused_with_a_reason(tokenizer, model):
    lm = MixtureLM([model], tokenizer=tokenizer, seq_len=SEQ_LEN)
    with pytest.raises(NotImplementedError, match="log-likelihoods only"):
        lm.generate_until([])


@pytest.mark.parametrize("weights, message", [([1.0], "2 ensemble members"), ([1.0, -1.0], "non-negative"),
                                              ([0.0, 0.0], "not all be zero")])
def test_bad_weights_are_refused(tokenizer, model, other_model, weights, message):
    with pytest.raises(SlowrunError, match=message):
        MixtureLM([model, other_model], weights, tokenizer=tokenizer, seq_len=SEQ_LEN)


def test_bad_setup_is_refused(tokenizer, model):
    with pytest.raises(SlowrunError, match="at least one model"):
        MixtureLM([], tokenizer=tokenizer, seq_len=SEQ_LEN)
    with pytest.raises(SlowrunError, match="seq_len"):
        MixtureLM([model], tokenizer=tokenizer, seq_len=0)
    small = make_model(64, seed=5)  # a model whose vocabulary the tokenizer overflows
    lm = MixtureLM([small], tokenizer=tokenizer, seq_len=SEQ_LEN)
    with pytest.raises(SlowrunError, match="outside the models' vocabulary"):
        lm._loglikelihood_tokens([(("", ""), [tokenizer.bos_id], [tokenizer.vocab_size - 1])])


def test_mixture_scores_match_numpy_and_survive_impossible_tokens():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 7)) * 4, rng.normal(size=(6, 7)) * 4
    a[0, 3] = -np.inf  # impossible for one member only: the mixture keeps the other's mass
    a[1, :] += 900.0  # far outside exp's range without the shift
    w = np.array([0.25, 0.75])
    targets = np.array([3, 0, 1, 2, 6, 5])
    target_lp, argmax = mixture_scores([torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)],
                                       torch.tensor(np.log(w)), torch.tensor(targets))
    a32, b32 = a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
    pa = np.exp(a32 - a32.max(1, keepdims=True)); pa /= pa.sum(1, keepdims=True)
    pb = np.exp(b32 - b32.max(1, keepdims=True)); pb /= pb.sum(1, keepdims=True)
    mixed = w[0] * pa + w[1] * pb
    assert target_lp.dtype == torch.float64
    np.testing.assert_allclose(target_lp.numpy(), np.log(mixed[np.arange(6), targets]), rtol=1e-12)
    assert argmax.tolist() == mixed.argmax(axis=1).tolist()
    assert np.isfinite(target_lp.numpy()).all()
    # One member: its own log-softmax and argmax.
    single_lp, single_argmax = mixture_scores([torch.tensor(b32)], torch.zeros(1, dtype=torch.float64),
                                              torch.tensor(targets))
    np.testing.assert_allclose(single_lp.numpy(), np.log(pb[np.arange(6), targets]), rtol=1e-12)
    assert single_argmax.tolist() == b32.argmax(axis=1).tolist()
