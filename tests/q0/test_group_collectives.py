"""The parts that talk inside a DDP group, on two real gloo processes: accumulation under DDP, Muon's
shared orthogonalisation, the leader's state reaching its group, and one checkpoint decision per group.

Two processes are started once for the module (each task saves what it saw); the tests compare that
with the same computation in this single process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from q0_reference.checkpointing import CheckpointClock, CheckpointPolicy, share_from_leader
from q0_reference.model import build_gpt
from q0_reference.muon import BatchedMuon
from q0_reference.placement import Placement
from q0_reference.trainer import accumulated_step
from q0_reference.recipes import Q0Settings, Recipe, train_q0, train_single
from harness.common.distributed import RankGroup
from tests.q0.fakes import FakeContext
from tests.q0.fakes import GradientRecorder as Recorder

SINGLE = dict(d_model=32, n_layer=1, n_head=2, batch_size=8, micro_batch_size=2, warmup_steps=2, log_every=1,
              compile="off", autocast="fp32")
TIMED = dict(d_model=32, n_layer=1, n_head=2, batch_size=12, micro_batch_size=2, warmup_steps=2, log_every=2,
             compile="off", autocast="fp32", snapshot_dtype="float32")
CONFIG = dict(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32, mlp="swiglu")
WORLD = 2


def batch(seed=3, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 64, (n, 16), generator=g), torch.randint(0, 64, (n, 16), generator=g)


def model64(seed=0):
    torch.manual_seed(seed)
    return build_gpt(CONFIG).double()




def muon_params(seed=1):
    g = torch.Generator().manual_seed(seed)
    shapes = [(32, 32)] * 5 + [(96, 32)] * 3 + [(32, 96)] * 2  # uneven stacks: 5 and 3 do not split in two
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    return params, grads


def run_muon(params, grads, process_group=None):
    opt = BatchedMuon(params, lr=0.02, weight_decay=0.1, process_group=process_group)
    for step_grads in grads:
        for p, grad in zip(params, step_grads):
            p.grad = grad.clone()
        opt.step()
    return [p.detach().clone() for p in params]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    group = RankGroup(0, (0, 1), rank, dist.group.WORLD)
    placement = Placement(0, 1, group)
    out = {}

    # 1. DDP over the group: two ranks x two microbatches of two sequences, one all-reduce per bucket
    model = model64()
    ddp = placement.wrap(model, "cpu")
    calls = []

    def counting_hook(state, bucket):
        calls.append(1)
        fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
        return fut.then(lambda f: f.value()[0] / WORLD)

    ddp.register_comm_hook(None, counting_hook)
    x, y = batch()
    mine = slice(rank * 4, rank * 4 + 4)  # this rank's shard of the global batch of 8
    xs, ys = x[mine], y[mine]
    recorder = Recorder(model)
    out["loss"] = accumulated_step(ddp, recorder, [(xs[:2], ys[:2]), (xs[2:], ys[2:])], max_grad_norm=None)
    out["grads"] = recorder.grads
    out["allreduce_calls_accumulated"] = len(calls)
    calls.clear()
    accumulated_step(ddp, Recorder(model), [(xs, ys)], max_grad_norm=None)
    out["allreduce_calls_single"] = len(calls)

    # 2. Muon with the orthogonalisation shared out over the group
    params, grads = muon_params()
    out["muon"] = run_muon(params, grads, process_group=dist.group.WORLD)

    # 3. the leader's state reaches every rank of the group
    g = torch.Generator().manual_seed(9)
    state = {"model": {"w": torch.randn(3, 4, generator=g), "b": torch.arange(5)},
             "optimizer": {"state": {0: {"momentum_buffer": torch.randn(2, 2, generator=g)}},
                           "param_groups": [{"lr": 0.1, "params": [0]}]},
             "generator": torch.Generator().manual_seed(4).get_state()} if rank == 0 else {"step": 7}
    out["shared"] = share_from_leader(state, ("model", "optimizer", "generator"), placement)

    # 4. the clock's decision is the leader's: rank 1's clock says "due" at once, rank 0's never
    clock = CheckpointClock(CheckpointPolicy(every=0, minutes=1.0), placement,
                            clock=(lambda: 0.0) if rank == 0 else iter([0.0, 1e9]).__next__)
    out["due"] = clock.due()

    # 5. the single-model recipe on a group of two: DDP, sharded stream, accumulation
    ctx = FakeContext(world_size=WORLD, rank=rank, budget=1.0, seed=4)
    ctx.rank_groups = lambda n: group
    train_single(ctx, Recipe.from_hparams(SINGLE), epochs=1.0, seed=4, snapshot_every_epochs=0)
    out["single"] = (ctx.snapshots, [e["loss"] for e in ctx.logs if "loss" in e], dict(ctx.streams))

    # 6. q0 under a cap on the group, 3 microbatches a step: the leader's clock alone says when the group
    # stops (rank 1's clock is skewed to say there is all the time in the world)
    ctx = FakeContext(world_size=WORLD, rank=rank, budget=8.0, seed=5, time_limit_s=100.0)
    ctx.rank_groups = lambda n: group
    ctx.gather = _all_gather
    ctx.train_clock = (lambda: ctx.served_targets / (6 * 16) * 10.0) if rank == 0 else (lambda: 0.0)
    if rank == 1:
        time.sleep(0.05)  # and it starts late
    train_q0(ctx, Recipe.from_hparams(TIMED), Q0Settings.from_hparams(TIMED))
    out["timed"] = ([tag for tag, _, _ in ctx.snapshots], dict(ctx.streams),
                    [e for e in ctx.logs if e.get("event") in ("clock plan", "stopped for the cap")], ctx.ensemble)
    torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _all_gather(key, value):
    values = [None] * WORLD
    dist.all_gather_object(values, value)
    return values


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("group")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(str(folder / "init"), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_ddp_accumulation_over_two_ranks_equals_one_process_on_the_whole_batch(ranks):
    model = model64()
    recorder = Recorder(model)
    x, y = batch()
    loss = accumulated_step(model, recorder, [(x, y)], max_grad_norm=None)
    for out in ranks:
        for name, grad in recorder.grads.items():
            torch.testing.assert_close(out["grads"][name], grad, rtol=1e-10, atol=1e-14, msg=name)
    assert sum(out["loss"] for out in ranks) / WORLD == pytest.approx(loss, rel=1e-12)


def test_ddp_all_reduces_once_per_step_however_many_microbatches(ranks):
    for out in ranks:
        assert out["allreduce_calls_single"] >= 1
        assert out["allreduce_calls_accumulated"] == out["allreduce_calls_single"]


def test_shared_orthogonalisation_gives_the_single_process_update(ranks):
    params, grads = muon_params()
    alone = run_muon(params, grads)
    for out in ranks:
        for a, b in zip(out["muon"], alone):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_leaders_state_reaches_every_rank(ranks):
    leader = ranks[0]["shared"]
    follower = ranks[1]["shared"]
    assert torch.equal(leader["model"]["w"], follower["model"]["w"])
    assert follower["model"]["b"].dtype == torch.int64 and torch.equal(follower["model"]["b"], torch.arange(5))
    assert torch.equal(follower["optimizer"]["state"][0]["momentum_buffer"],
                       leader["optimizer"]["state"][0]["momentum_buffer"])
    assert follower["optimizer"]["param_groups"] == [{"lr": 0.1, "params": [0]}]
    assert torch.equal(follower["generator"], torch.Generator().manual_seed(4).get_state())


def test_a_group_takes_one_checkpoint_decision(ranks):
    assert ranks[0]["due"] is False and ranks[1]["due"] is False  # the leader's clock decides


def test_single_model_on_two_ranks_matches_one_process_with_the_same_global_batch(ranks):
    alone = FakeContext(budget=1.0, seed=4)
    train_single(alone, Recipe.from_hparams(SINGLE), epochs=1.0, seed=4, snapshot_every_epochs=0)
    (snapshots, losses, streams), (follower_snapshots, _, follower_streams) = ranks[0]["single"], ranks[1]["single"]
    assert follower_snapshots == []  # the leader writes the group's snapshots
    assert streams == {("main", (0, 2)): 8} and follower_streams == {("main", (1, 2)): 8}  # 4 steps x 2 microbatches
    assert len(alone.logs) and len(losses) == 4
    (_, expected, _), = alone.snapshots
    (_, got, _), = snapshots
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


def test_q0_under_a_cap_stops_its_group_together_on_the_leaders_clock(ranks):
    (tags, streams, events, ensemble), (follower_tags, follower_streams, follower_events, _) = (
        ranks[0]["timed"], ranks[1]["timed"])
    plan_log = [e for e in events if e["event"] == "clock plan"]
    assert plan_log and plan_log[0]["planned_epochs"] == 8.0  # the warm-up found it fast: the clock decides later
    stops, follower_stops = ([e for e in x if e["event"] == "stopped for the cap"] for x in (events, follower_events))
    same = [{k: v for k, v in e.items() if k != "remaining_s"} for e in stops]  # (each rank's own clock)
    assert len(stops) == 1 and [{k: v for k, v in e.items() if k != "remaining_s"} for e in follower_stops] == same
    assert tags and follower_tags == [] and ensemble == "prior"
    (key, count), = streams.items()
    (follower_key, follower_count), = follower_streams.items()
    assert key[1] == (0, 2) and follower_key[1] == (1, 2) and count == follower_count
    assert count % 3 == 0  # whole steps of 3 microbatches
    assert count // 3 * 10.0 <= 100.0  # 10 s a step on the leader's clock: stopped within the cap
