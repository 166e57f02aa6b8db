"""Training streams: epochs that are real passes, seeded orders, positions that are counts of windows."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data.store import TokenStore
from harness.errors import BudgetExhausted
from harness.server.meter import StreamReader, stream_seed
from harness.server.clock import TrainClock
from harness.server.ledger import Ledger


def toy_store(doc_lengths=(5, 9, 3, 12, 7, 4), bos=99) -> TokenStore:
    tokens, starts, next_id = [], [], 0
    for length in doc_lengths:
        starts.append(len(tokens))
        tokens.append(bos)
        tokens.extend(range(next_id, next_id + length - 1))
        next_id += length - 1
    return TokenStore(np.array(tokens, np.uint16), np.array(starts, np.int64), bos, 100)


def ledger_for(store: TokenStore, seq: int, epochs: float, world_size: int = 1) -> Ledger:
    allowed = int(np.floor(epochs * store.n_tokens + 1e-6))
    return Ledger(allowed, store.n_tokens, seq, world_size, epochs, TrainClock())


def test_one_epoch_serves_every_token_as_a_target_once():
    store = toy_store()
    n = store.n_tokens  # 40
    seq = 4
    ledger = ledger_for(store, seq, 3.0)
    reader = StreamReader(store, seq, run_seed=1, stream_id="s")
    targets_seen = []
    for _ in range(n // seq):  # 10 windows of 4 targets = exactly one epoch of 40 tokens
        grant = ledger.draw(0, "s", 1, None)
        batch = reader.batch(grant.first_window, grant.windows)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        assert inputs.shape == targets.shape == (1, seq)
        targets_seen.extend(targets[0].tolist())
    assert ledger.served_targets() == n
    seed = stream_seed(1, "s")
    epoch0, epoch1 = store.epoch_tokens(seed, 0), store.epoch_tokens(seed, 1)
    # the 40 targets of the first pass: epoch 0 from its second token, then the first token of epoch 1
    assert targets_seen == epoch0[1:].tolist() + epoch1[:1].tolist()


def test_budget_refuses_the_first_window_past_it():
    store = toy_store()
    ledger = ledger_for(store, 4, 0.5)  # 20 targets = 5 windows
    ledger.draw(0, "s", 2, None), ledger.draw(0, "s", 2, None)  # 16 targets
    with pytest.raises(BudgetExhausted, match="asked for 2 more window"):
        ledger.draw(0, "s", 2, None)  # 24 > 20: refused, nothing charged
    assert ledger.served_targets() == ledger.reserved_targets() == 16
    ledger.draw(0, "t", 1, None)  # 20: exactly the budget
    with pytest.raises(BudgetExhausted):
        ledger.draw(0, "t", 1, None)
    assert ledger.served_targets() == 20


def test_streams_have_independent_seeded_orders_and_resume_from_counts():
    store = toy_store(tuple(range(3, 40)))
    ledger = ledger_for(store, 8, 10)
    a, b = StreamReader(store, 8, 7, "a"), StreamReader(store, 8, 7, "b")
    first_a = a.batch(ledger.draw(0, "a", 3, None).first_window, 3)
    first_b = b.batch(ledger.draw(0, "b", 3, None).first_window, 3)
    assert not np.array_equal(first_a, first_b)
    later = [a.batch(ledger.draw(0, "a", 3, None).first_window, 3) for _ in range(4)]
    # a new ledger restored from rank 0's state after the first batch of "a" continues where it was
    restored = ledger_for(store, 8, 10)
    restored.restore(0, {"streams": {"a": {"batch_size": 3, "shards": 1, "windows": {"0": 3}}}})
    again = StreamReader(store, 8, 7, "a")
    assert np.array_equal(again.batch(restored.draw(0, "a", 3, None).first_window, 3), later[0])
    assert restored.served_targets() == 2 * 3 * 8


def test_fitness_reads_are_not_epochs_but_start_the_clock():
    store = toy_store()
    clock = TrainClock()
    ledger = Ledger(store.n_tokens, store.n_tokens, 4, 1, 1.0, clock)
    assert not clock.started
    ledger.note_fitness(0, 500)
    assert clock.started  # data reached the method: training time runs from here
    assert ledger.served_targets() == 0 and ledger.meter_state().fitness_tokens == 500


def test_batches_equal_their_windows_cut_one_by_one_within_and_across_epochs():
    """A batch is one strided copy when it lies in one epoch and window by window when it crosses into the
    next; both must give the windows of the stream's endless order (checked against a plain concatenation)."""
    store = toy_store()
    n, seq, batch = store.n_tokens, 4, 3
    reader = StreamReader(store, seq, 2, "s")
    endless = np.concatenate([store.epoch_tokens(stream_seed(2, "s"), e) for e in range(6)])
    crossed = False
    for k in range(12):
        first = k * batch
        array = reader.batch(first, batch)
        expected = np.stack([endless[(first + r) * seq : (first + r) * seq + seq + 1] for r in range(batch)])
        assert np.array_equal(array, expected), k
        crossed |= (first * seq) // n != ((first + batch - 1) * seq + seq) // n
    assert crossed  # the loop did cover a batch that spans two epochs
