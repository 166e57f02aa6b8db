"""MixtureLM against an independent float64 computation from the models' logits."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance

from harness.eval.downstream.lm import MixtureLM
from harness.eval.downstream.mixing import member_positions, mix_target_logprobs, settle_greedy
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


def mixture_of(logits_list, w, targets):
    """log p(target) and argmax of sum_i w_i softmax(logits_i), all members at once, in numpy float64."""
    mixed = 0.0
    for logits, wi in zip(logits_list, w):
        x = logits.astype(np.float32).astype(np.float64)
        p = np.exp(x - x.max(1, keepdims=True))
        mixed = mixed + wi * p / p.sum(1, keepdims=True)
    return np.log(mixed[np.arange(len(targets)), targets]), mixed.argmax(axis=1)


def test_member_by_member_mixing_matches_numpy_and_survives_impossible_tokens():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 7)) * 4, rng.normal(size=(6, 7)) * 4
    a[0, 3] = -np.inf  # impossible for one member only: the mixture keeps the other's mass
    a[1, :] += 900.0  # far outside exp's range without the shift
    w = np.array([0.25, 0.75])
    targets = np.array([3, 0, 1, 2, 6, 5])
    members = [member_positions(torch.tensor(x, dtype=torch.float32), torch.tensor(targets), top_k=2) for x in (a, b)]
    log_w = torch.tensor(np.log(w))
    target_lp = mix_target_logprobs(torch.stack([m.target_lp for m in members]), log_w)
    expected_lp, expected_argmax = mixture_of([a, b], w, targets)
    assert target_lp.dtype == torch.float64
    np.testing.assert_allclose(target_lp.numpy(), expected_lp, rtol=1e-12)
    assert np.isfinite(target_lp.numpy()).all()
    greedy, unsettled = settle_greedy(members, log_w, torch.tensor(targets))
    settled = ~unsettled.numpy()
    assert (greedy.numpy()[settled] == (expected_argmax == targets)[settled]).all()
    # One member: its own log-softmax exactly, and every flag settled by its own top-k.
    single = member_positions(torch.tensor(b, dtype=torch.float32), torch.tensor(targets))
    single_lp = mix_target_logprobs(single.target_lp[None], torch.zeros(1, dtype=torch.float64))
    np.testing.assert_allclose(single_lp.numpy(), mixture_of([b], [1.0], targets)[0], rtol=1e-12)
    single_greedy, single_unsettled = settle_greedy([single], torch.zeros(1, dtype=torch.float64), torch.tensor(targets))
    assert not single_unsettled.any()
    assert single_greedy.tolist() == (b.astype(np.float32).argmax(axis=1) == targets).tolist()


def test_greedy_flags_settled_by_top_k_on_a_hand_worked_mixture():
    """A = [.5, .3, .1, .1], B = [.1, .6, .2, .1], equal weights: the mixture is [.3, .45, .15, .1].
    With the top two ids of each member, id 0's mass is at most .5*.5 + .5*min(.2, 1 - .8) = .35 < .45 and
    id 2's at most .5*min(.3, .2) + .5*.2 = .2, every other id's at most .5*.2 + .5*.2 = .2: target 1 is
    certainly the argmax. Target 0 (.3) is certainly beaten: id 1's known mass is .5*.3 + .5*.6 = .45.
    With the top id alone, id 0's bound is .5*.5 + .5*min(.6, .4) = .45, equal to target 1's mass, and id
    1's known mass is .5*.6 = .3, equal to target 0's: neither can be settled."""
    a, b = np.log([[0.5, 0.3, 0.1, 0.1]] * 2), np.log([[0.1, 0.6, 0.2, 0.1]] * 2)
    targets = torch.tensor([1, 0])
    log_w = torch.tensor(np.log([0.5, 0.5]))
    members = [member_positions(torch.tensor(x), targets, top_k=2) for x in (a, b)]
    greedy, unsettled = settle_greedy(members, log_w, targets)
    assert unsettled.tolist() == [False, False] and greedy.tolist() == [True, False]
    members = [member_positions(torch.tensor(x), targets, top_k=1) for x in (a, b)]
    assert settle_greedy(members, log_w, targets)[1].tolist() == [True, True]


class CountingMember:
    """Builds its model when opened and forgets it when closed; counts how many models are alive at once."""

    alive: set = set()
    most_alive = 0

    def __init__(self, vocab_size: int, seed: int):
        self.vocab_size, self.seed, self.opened, self.ref = vocab_size, seed, 0, None
        self.model = None

    def open(self):
        self.model = make_model(self.vocab_size, self.seed)
        self.opened += 1
        self.ref = weakref.ref(self.model)
        CountingMember.alive.add(id(self))
        CountingMember.most_alive = max(CountingMember.most_alive, len(CountingMember.alive))
        return self.model

    def close(self):
        self.model = None
        gc.collect()
        assert self.ref is None or self.ref() is None, "the scorer kept a reference to a closed member's model"
        CountingMember.alive.discard(id(self))


def test_members_are_scored_one_at_a_time_and_equal_the_all_at_once_mixture(tokenizer, model, other_model):
    """Three members built only when scoring reaches them: never two alive at once, and the scores equal the
    all-at-once mixture (every member's model in memory, mixed per token in float64 from scratch)."""
    CountingMember.alive.clear()
    CountingMember.most_alive = 0
    members = [CountingMember(tokenizer.vocab_size, seed) for seed in (1, 2, 7)]
    weights = [0.2, 0.3, 0.5]
    lm = MixtureLM(members, weights, tokenizer=tokenizer, seq_len=SEQ_LEN, batch_size=3)
    got = lm.loglikelihood(instances(TEXT_REQUESTS))
    assert CountingMember.most_alive == 1 and not CountingMember.alive
    in_memory = [model, other_model, make_model(tokenizer.vocab_size, 7)]  # the same seeds, all at once
    for (context, continuation), (logp, greedy) in zip(TEXT_REQUESTS, got):
        ctx_ids, cont_ids = token_pair(tokenizer, context, continuation)
        expected, expected_greedy = brute_force_score(in_memory, weights, ctx_ids, cont_ids, SEQ_LEN)
        assert logp == pytest.approx(expected, abs=TOL)
        assert greedy == expected_greedy
    assert got == MixtureLM(in_memory, weights, tokenizer=tokenizer, seq_len=SEQ_LEN,
                            batch_size=3).loglikelihood(instances(TEXT_REQUESTS))


def test_flags_the_top_k_cannot_settle_are_decided_by_a_second_pass(tokenizer):
    """With one id kept per member many flags stay unsettled; a second pass over the members (each opened
    again, still one at a time) mixes the whole distributions there, and every flag equals the brute force."""
    CountingMember.alive.clear()
    CountingMember.most_alive = 0
    members = [CountingMember(tokenizer.vocab_size, seed) for seed in (1, 2)]
    weights = [0.5, 0.5]
    lm = MixtureLM(members, weights, tokenizer=tokenizer, seq_len=SEQ_LEN, batch_size=3, top_k=1)
    context = [tokenizer.bos_id] + tokenizer.encode_batch(["Metals conduct heat"])[0]
    in_memory = [make_model(tokenizer.vocab_size, seed) for seed in (1, 2)]
    greedy = greedy_continuation(in_memory, weights, context, 5)
    requests = [(("", ""), context, greedy), (("", ""), context, greedy[:2] + [(greedy[2] + 1) % 300])]
    for (context_text, continuation) in TEXT_REQUESTS:
        requests.append((("", ""), *token_pair(tokenizer, context_text, continuation)))
    got = lm._loglikelihood_tokens(requests)
    assert [m.opened for m in members] == [2, 2] and CountingMember.most_alive == 1
    for (_, ctx_ids, cont_ids), (logp, flag) in zip(requests, got):
        expected, expected_greedy = brute_force_score(in_memory, weights, ctx_ids, cont_ids, SEQ_LEN)
        assert logp == pytest.approx(expected, abs=TOL) and flag == expected_greedy
    assert got[0][1] is True and got[1][1] is False
