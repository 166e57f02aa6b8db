"""The meter and training streams: exact accounting, epochs that are real passes, seeded orders."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data.store import TokenStore
from harness.meter import BudgetExhausted, Meter, TrainStream


def toy_store(doc_lengths=(5, 9, 3, 12, 7, 4), bos=99) -> TokenStore:
    tokens, starts, next_id = [], [], 0
    for length in doc_lengths:
        starts.append(len(tokens))
        tokens.append(bos)
        tokens.extend(range(next_id, next_id + length - 1))
        next_id += length - 1
    return TokenStore(np.array(tokens, np.uint16), np.array(starts, np.int64), bos, 100)


def test_one_epoch_serves_every_token_as_a_target_once():
    store = toy_store()
    n = store.n_tokens  # 40
    seq = 4
    meter = Meter(n, seq, budget_epochs=3.0)
    stream = TrainStream(store, meter, "s", run_seed=1, batch_size=1)
    targets_seen = []
    for _ in range(n // seq):  # 10 windows of 4 targets = exactly one epoch of 40 tokens
        inputs, targets = next(stream)
        assert inputs.shape == targets.shape == (1, seq)
        assert np.array_equal(inputs[0, 1:], targets[0, :-1])
        targets_seen.extend(targets[0].tolist())
    assert meter.epochs == pytest.approx(1.0)
    epoch0 = store.epoch_tokens(stream._seed, 0)
    epoch1 = store.epoch_tokens(stream._seed, 1)
    # the 40 targets of the first pass: epoch 0 from its second token, then the first token of epoch 1
    assert targets_seen == epoch0[1:].tolist() + epoch1[:1].tolist()


def test_budget_refuses_the_first_window_past_it():
    store = toy_store()
    meter = Meter(store.n_tokens, 4, budget_epochs=0.5)  # 20 targets = 5 windows
    stream = TrainStream(store, meter, "s", run_seed=0, batch_size=2)
    next(stream), next(stream)  # 16 targets
    with pytest.raises(BudgetExhausted, match="asked for 2 more window"):
        next(stream)  # 24 > 20: refused, nothing charged
    assert meter.total_targets == 16
    single = TrainStream(store, meter, "t", run_seed=0, batch_size=1)
    next(single)  # 20: exactly the budget
    with pytest.raises(BudgetExhausted):
        next(single)
    assert meter.epochs == pytest.approx(0.5)


def test_streams_have_independent_seeded_orders_and_resume_from_counts():
    store = toy_store(tuple(range(3, 40)))
    meter = Meter(store.n_tokens, 8, budget_epochs=10)
    a = TrainStream(store, meter, "a", run_seed=7, batch_size=3)
    b = TrainStream(store, meter, "b", run_seed=7, batch_size=3)
    first_a, first_b = next(a)[0], next(b)[0]
    assert not np.array_equal(first_a.numpy(), first_b.numpy())
    later = [next(a)[1] for _ in range(4)]
    # a fresh stream object with the same id continues from the meter's count
    meter2 = Meter(store.n_tokens, 8, budget_epochs=10)
    meter2.state.windows["a"] = 3
    meter2.state.targets["a"] = 24
    again = TrainStream(store, meter2, "a", run_seed=7, batch_size=3)
    assert np.array_equal(next(again)[1].numpy(), later[0].numpy())


def test_fitness_reads_are_not_epochs():
    meter = Meter(1000, 10, budget_epochs=1)
    meter.charge_fitness(500)
    assert meter.epochs == 0 and meter.state.fitness_tokens == 500


def test_batches_equal_their_windows_cut_one_by_one_within_and_across_epochs():
    """A batch is one strided copy when it lies in one epoch and window by window when it crosses into the
    next; both must give the windows of the stream's endless order (checked against a plain concatenation)."""
    store = toy_store()
    n, seq, batch = store.n_tokens, 4, 3
    meter = Meter(n, seq, budget_epochs=10.0)
    stream = TrainStream(store, meter, "s", run_seed=2, batch_size=batch)
    endless = np.concatenate([store.epoch_tokens(stream._seed, e) for e in range(6)])
    crossed = False
    for k in range(12):
        array = stream.next_array()
        first = k * batch
        expected = np.stack([endless[(first + r) * seq : (first + r) * seq + seq + 1] for r in range(batch)])
        assert np.array_equal(array, expected), k
        crossed |= (first * seq) // n != ((first + batch - 1) * seq + seq) // n
    assert crossed  # the loop did cover a batch that spans two epochs
