"""The job's ledger: every group step decided once, whatever order the shards' requests arrive in.

The properties are checked against a model computed independently of the ledger: a step of a stream with
n shards of batch b costs n * b * seq_len targets, the budget grants whole steps while they fit, and every
shard that asks for step k gets the answer the first one got.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import BudgetExhausted, TimeExhausted
from harness.server.clock import TrainClock
from harness.server.ledger import Ledger, StreamRefused

SEQ = 4


def ledger(allowed: int, world_size: int = 8, clock: TrainClock | None = None, epoch_tokens: int = 1000) -> Ledger:
    return Ledger(allowed, epoch_tokens, SEQ, world_size, allowed / epoch_tokens, clock or TrainClock())


@st.composite
def schedules(draw):
    """Streams (shards, batch size), a budget, and one interleaving of every shard's requests: each shard
    asks for `steps` batches in order, the shards of all streams mixed by a random permutation (a shard
    may run any number of steps ahead of its peers, as a rank that fetches all its microbatches first)."""
    streams = draw(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3)), min_size=1, max_size=3))
    steps = draw(st.integers(1, 12))
    step_sizes = [shards * batch * SEQ for shards, batch in streams]
    allowed = draw(st.integers(0, sum(step_sizes) * steps + 5))
    requests = [(s, i) for s, (shards, _) in enumerate(streams) for i in range(shards) for _ in range(steps)]
    order = draw(st.permutations(requests))
    return streams, steps, allowed, order


@settings(max_examples=300, deadline=None)
@given(schedules())
def test_every_step_is_charged_once_and_every_shard_gets_its_answer(schedule):
    streams, steps, allowed, order = schedule
    book = ledger(allowed)
    answers: dict[tuple[int, int], set] = {}
    position = {}
    granted_windows = {}
    for s, index in order:
        shards, batch = streams[s]
        rank = s * 4 + index  # every shard its own rank
        step = position.get((s, index), 0)
        try:
            grant = book.draw(rank, f"s{s}", batch, [index, shards] if shards > 1 else None)
            answer = "granted"
            assert grant.first_window == (step * shards + index) * batch  # the server's position, round-robin
            position[(s, index)] = step + 1
            granted_windows[(s, index)] = granted_windows.get((s, index), 0) + batch
        except BudgetExhausted:
            answer = "refused"  # a refused step stays the shard's step: its next request asks for it again
        answers.setdefault((s, step), set()).add(answer)
    # every shard that asked for step k of a stream got the same answer
    assert all(len(a) == 1 for a in answers.values()), answers
    # charged once: the reservation is exactly the granted steps times their cost
    granted_steps = {key for key, a in answers.items() if a == {"granted"}}
    expected = sum(streams[s][0] * streams[s][1] * SEQ for s, _ in granted_steps)
    assert book.reserved_targets() == expected <= allowed
    # every shard asked for every step it was granted, so what was served is what was charged
    assert book.served_targets() == expected == sum(granted_windows.values()) * SEQ
    assert book.meter_state().targets == {
        (f"s{s}" if streams[s][0] == 1 else f"s{s}[{i}/{streams[s][0]}]"): w * SEQ
        for (s, i), w in granted_windows.items()}
    # the budget is used to the last whole step: a refused step did not fit in what was left
    for (s, step), a in answers.items():
        if a == {"refused"}:
            shards, batch = streams[s]
            assert allowed - book.reserved_targets() < shards * batch * SEQ


def test_a_shard_far_ahead_does_not_make_its_late_peer_pay_again():
    """Shard 0 fetches eight microbatches before shard 1 fetches its first (q0 fetches a whole optimizer
    step up front): shard 1 reads the eight decisions shard 0 made, and pays nothing twice."""
    book = ledger(allowed=16 * 2 * 2 * SEQ)  # exactly 16 steps of 2 shards x 2 windows
    for _ in range(8):
        book.draw(0, "main", 2, [0, 2])
    assert book.pending_steps() == 8 and book.reserved_targets() == 8 * 2 * 2 * SEQ
    for _ in range(8):
        book.draw(1, "main", 2, [1, 2])
    assert book.pending_steps() == 0
    assert book.served_targets() == book.reserved_targets() == 8 * 2 * 2 * SEQ
    for _ in range(8):
        book.draw(1, "main", 2, [1, 2])  # now shard 1 runs ahead
    for _ in range(8):
        book.draw(0, "main", 2, [0, 2])
    assert book.served_targets() == book.allowed_targets  # the whole budget, to the last step
    with pytest.raises(BudgetExhausted):
        book.draw(0, "main", 2, [0, 2])
    with pytest.raises(BudgetExhausted):
        book.draw(1, "main", 2, [1, 2])


def test_at_the_time_cap_the_late_shard_of_an_admitted_step_still_trains():
    now = [0.0]
    clock = TrainClock(limit_s=10.0, now=lambda: now[0])
    book = ledger(10**9, clock=clock)
    book.draw(0, "main", 1, [0, 2])  # step 0 admitted: the clock starts
    now[0] = 9.9
    book.draw(0, "main", 1, [0, 2])  # step 1 admitted just before the cap
    now[0] = 12.0
    book.draw(1, "main", 1, [1, 2])  # shard 1 of steps 0 and 1, after the cap: the steps were admitted
    book.draw(1, "main", 1, [1, 2])
    with pytest.raises(TimeExhausted):
        book.draw(1, "main", 1, [1, 2])  # step 2 is refused for shard 1 ...
    with pytest.raises(TimeExhausted):
        book.draw(0, "main", 1, [0, 2])  # ... and for shard 0
    assert book.served_targets() == 4 * SEQ


def test_a_stream_plan_is_fixed_and_a_paid_step_cannot_be_asked_for_again():
    """The replay: after step 0 of a shard is paid, asking with batch_size = windows_served + 1 used to
    land on step 0 again and be served free."""
    book = ledger(allowed=10**6)
    first = book.draw(0, "main", 2, [0, 2])
    with pytest.raises(StreamRefused, match="fixed by its first request"):
        book.draw(0, "main", first.windows_served + 1, [0, 2])
    with pytest.raises(StreamRefused, match="fixed by its first request"):
        book.draw(0, "main", 2, None)  # nor unsharded
    again = book.draw(0, "main", 2, [0, 2])
    assert again.first_window == first.first_window + 2 * 2  # the next step, never the first again
    assert book.reserved_targets() == 2 * 2 * 2 * SEQ


def test_shards_belong_to_one_rank_and_are_refused_in_one_process_runs():
    book = ledger(allowed=10**6, world_size=2)
    book.draw(0, "main", 2, [0, 2])
    with pytest.raises(StreamRefused, match="read by rank 0"):
        book.draw(1, "main", 2, [0, 2])
    book.draw(0, "solo", 2, None)
    with pytest.raises(StreamRefused, match="read by rank 0"):
        book.draw(1, "solo", 2, None)
    with pytest.raises(StreamRefused, match="the job has 2 ranks"):
        book.draw(0, "wide", 2, [0, 4])
    one = ledger(allowed=10**6, world_size=1)
    with pytest.raises(StreamRefused, match="one-process run"):
        one.draw(0, "main", 2, [0, 2])
    for bad in ([2, 2], [-1, 2], [0, True], "0/2", [0, 2, 1]):
        with pytest.raises(StreamRefused, match="shard must be"):
            book.draw(0, "x", 1, bad)
    with pytest.raises(StreamRefused, match="batch_size"):
        book.draw(0, "y", 0, None)


@pytest.mark.parametrize("shards,accumulation", [(2, 1), (2, 3), (4, 8)])
def test_threads_with_skew_each_get_every_answer_of_their_group(shards, accumulation):
    """Real threads, one per shard, each fetching `accumulation` microbatches per optimizer step and a
    random one late by up to 5 ms, until refused: every shard is refused at the same step, and the budget
    is spent to the last whole step."""
    batch = 2
    step = shards * batch * SEQ
    allowed = 37 * step + step // 2  # not a whole number of steps
    book = ledger(allowed)
    rng = random.Random(shards * 100 + accumulation)
    delays = [[rng.choice([0, 0.0002, 0.001, 0.005]) if rng.random() < 0.5 else 0 for _ in range(200)]
              for _ in range(shards)]
    served = [0] * shards
    refused_at = [None] * shards
    barrier = threading.Barrier(shards)

    def run(index):
        k = 0
        while True:
            time.sleep(delays[index][k % 200])
            for _ in range(accumulation):
                try:
                    book.draw(index, "main", batch, [index, shards])
                    served[index] += 1
                except BudgetExhausted:
                    refused_at[index] = served[index]
                    return
            barrier.wait(timeout=30)  # the optimizer step's all-reduce
            k += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(shards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a shard hangs"
    assert len(set(refused_at)) == 1 and refused_at[0] == 37  # every shard refused at step 37
    assert book.served_targets() == book.reserved_targets() == 37 * step
    assert allowed - book.served_targets() < step


@st.composite
def lockstep_runs(draw):
    """Streams read by DDP groups (shards, batch size, microbatches per optimizer step, the last one at least
    3), the shards of every stream interleaved the way DDP allows: a shard starts optimizer step k + 1 only
    once each peer has fetched all of step k (the all-reduce), so peers run up to a step apart and in any
    order within that; a checkpoint request arrives at a random point, maybe before a stream's first batch."""
    streams = draw(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 4)), min_size=1,
                            max_size=3))
    streams[-1] = (streams[-1][0], streams[-1][1], draw(st.integers(3, 5)))
    steps = draw(st.integers(2, 6))  # optimizer steps per shard
    position = {(s, i): 0 for s, (shards, _, _) in enumerate(streams) for i in range(shards)}
    order = []
    while True:
        ready = []
        for (s, i), at in position.items():
            shards, _, accumulation = streams[s]
            if at == steps * accumulation:
                continue
            step = at // accumulation
            if all(position[(s, j)] >= step * accumulation for j in range(shards)):
                ready.append((s, i))
        if not ready:
            break
        chosen = draw(st.sampled_from(sorted(ready)))
        order.append(chosen)
        position[chosen] += 1
    request_at = draw(st.integers(0, len(order)))
    return streams, order, request_at


@settings(max_examples=300, deadline=None)
@given(lockstep_runs())
def test_a_checkpoint_request_reaches_every_shard_of_a_stream_in_the_same_optimizer_step(run):
    streams, order, request_at = run
    book = ledger(10**9)
    position = {}
    first_flag: dict[tuple[int, int], int] = {}
    at_request = None
    for n, (s, index) in enumerate(order):
        if n == request_at:
            at_request = dict(position)
            book.request_checkpoint()
        shards, batch, _ = streams[s]
        grant = book.draw(s * 4 + index, f"s{s}", batch, [index, shards] if shards > 1 else None)
        local = position.get((s, index), 0)
        if grant.checkpoint_requested:
            assert n >= request_at  # never before the request
            first_flag.setdefault((s, index), local)
        position[(s, index)] = local + 1
    if at_request is None:  # the request came after every batch: nobody was left to tell
        return
    for s, (shards, _, accumulation) in enumerate(streams):
        # the step the farthest shard stood at when the request came (0 for a stream not read yet), worked
        # out here from the interleaving, not asked of the ledger
        farthest = max([at_request.get((s, i), 0) for i in range(shards)])
        told = {i: first_flag.get((s, i)) for i in range(shards)}
        for i in range(shards):
            if position[(s, i)] > farthest:  # the shard read past that step: it was told, exactly there
                assert told[i] == farthest, (s, i, told, farthest)
        steps_told = {told[i] // accumulation for i in range(shards) if told[i] is not None}
        assert len(steps_told) <= 1  # one optimizer step for the whole group


def test_a_checkpoint_request_before_any_batch_reaches_each_stream_at_its_first_step():
    book = ledger(10**6, world_size=2)
    book.request_checkpoint()
    assert book.draw(0, "a", 2, [0, 2]).checkpoint_requested
    assert book.draw(1, "a", 2, [1, 2]).checkpoint_requested


def test_without_a_request_no_batch_carries_one():
    book = ledger(10**6, world_size=2)
    assert not any(book.draw(r, "a", 2, [r, 2]).checkpoint_requested for _ in range(5) for r in (0, 1))
