"""Distributed runs on CPU: two processes under torchrun with gloo, against the same run in one process."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from harness.common.distributed import (COLLECTIVE_TIMEOUT_ENV, DistributedError, LaunchSpec, collective_timeout,
                                       split_ranks)
from harness.run.runner import RunRequest, prepare_run, resume_run, run_method
from tests.runner.conftest import train_in_subprocess, wait_until_gone

PROJECT = Path(__file__).resolve().parents[2]
TINY_Q0 = (("d_model", "32"), ("n_layer", "1"), ("n_head", "2"), ("batch_size", "8"), ("n_trajectories", "2"),
           ("warmup_steps", "5"), ("log_every", "50"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks() -> LaunchSpec:
    return LaunchSpec(nproc_per_node=2, master_port=free_port())


def read(run_dir: Path) -> dict:
    return json.loads((run_dir / "record.json").read_text())


def weights(run_dir: Path) -> dict:
    return {p.parent.name: load_file(p) for p in sorted((run_dir / "snapshots").glob("*/*.safetensors"))}


def test_split_ranks_is_contiguous_and_even():
    assert split_ranks(4, 2) == [(0, 1), (2, 3)]
    assert split_ranks(5, 2) == [(0, 1, 2), (3, 4)]
    assert split_ranks(2, 5) == [(0,), (1,)]  # never more groups than ranks


def test_collective_timeout_comes_from_the_environment_or_stays_torchs(monkeypatch):
    monkeypatch.delenv(COLLECTIVE_TIMEOUT_ENV, raising=False)
    assert collective_timeout() is None
    monkeypatch.setenv(COLLECTIVE_TIMEOUT_ENV, "2.5")
    assert collective_timeout() == datetime.timedelta(milliseconds=2500)
    for bad in ("soon", "0", "-3", "nan", "inf", "1e9"):
        monkeypatch.setenv(COLLECTIVE_TIMEOUT_ENV, bad)
        with pytest.raises(DistributedError, match=COLLECTIVE_TIMEOUT_ENV):
            collective_timeout()


def test_launch_spec_rejects_bad_placement():
    with pytest.raises(DistributedError, match="--node-rank"):
        LaunchSpec(nproc_per_node=2, nnodes=2, node_rank=2)
    with pytest.raises(DistributedError, match="--nproc-per-node"):
        LaunchSpec(nproc_per_node=0)
    command = LaunchSpec(nproc_per_node=2, master_port=1234).torchrun_command("harness.confined.method_process", ["RUN"])
    assert command[1:3] == ["-m", "torch.distributed.run"] and command[-3:] == ["-m", "harness.confined.method_process", "RUN"]


def test_q0_two_trajectories_on_two_ranks_match_one_process(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    common = dict(method_dir=PROJECT / "submissions" / "q0", track="synthetic", epochs=8.0, seed=3,
                  overrides=TINY_Q0, data_dir=synthetic_data, progress=False)
    single = run_method(RunRequest(out=tmp_path / "single", **common))
    double = run_method(RunRequest(out=tmp_path / "double", launch=two_ranks(), **common))
    a, b = read(single), read(double)
    assert a["status"] == b["status"] == "ok"
    assert b["compute"]["world_size"] == 2
    assert b["metered"] == a["metered"]  # identical epochs and per-stream counts
    assert set(a["metered"]["per_stream"]) == {"trajectory0", "trajectory1"}
    # one trajectory per rank: every trajectory-1 snapshot was written by rank 1
    ranks = {s["tag"]: s["meta"]["rank"] for s in b["snapshots"]}
    assert {tag for tag, rank in ranks.items() if rank == 1} == {t for t in ranks if t.startswith("t1-")}
    wa, wb = weights(single), weights(double)
    assert sorted(wa) == sorted(wb) and len(wa) == 4
    for tag in wa:
        for name, tensor in wa[tag].items():
            assert tensor.shape == wb[tag][name].shape
            assert (tensor - wb[tag][name]).abs().max().item() <= 1e-4 * (1 + tensor.abs().max().item()), (tag, name)
    for sa, sb in zip(sorted(a["snapshots"], key=lambda s: s["tag"]), sorted(b["snapshots"], key=lambda s: s["tag"])):
        assert sa["val_loss"] == pytest.approx(sb["val_loss"], rel=1e-5)


GREEDY = """
import time
import torch.distributed as dist
stream = ctx.train_stream(f"rank{ctx.rank}", batch_size=4)
model = Bigram(ctx.vocab_size)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
dist.barrier()  # both ranks start drawing together
for i, (x, y) in enumerate(stream):
    loss = step(model, opt, x, y)
    time.sleep(0.002)  # a step's worth of time, so the ranks interleave
    if i == 0:
        ctx.save_snapshot(model, f"first-r{ctx.rank}")
"""


def test_budget_holds_over_all_ranks(make_method, synthetic_data, tmp_path, monkeypatch):
    """Both ranks draw until refused: together they get the budget, not the budget each."""
    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    method = make_method(GREEDY)
    run_dir = run_method(RunRequest(method_dir=method, track="synthetic", epochs=1.0, data_dir=synthetic_data,
                                    out=tmp_path / "run", progress=False, launch=two_ranks()))
    record = read(run_dir)
    assert record["status"] == "budget-exceeded"
    metered = record["metered"]
    per_batch = 4 * 128
    allowed = metered["epoch_tokens"]
    assert set(metered["per_stream"]) == {"rank0", "rank1"}
    assert sum(metered["per_stream"].values()) == metered["train_tokens"]
    assert allowed - per_batch < metered["train_tokens"] <= allowed
    assert all(v > 0 for v in metered["per_stream"].values())
    assert sorted(s["tag"] for s in record["snapshots"]) == ["first-r0", "first-r1"]  # kept, once each


def test_q0_ddp_inside_a_group_writes_each_snapshot_once(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    overrides = tuple((k, v) for k, v in TINY_Q0 if k != "n_trajectories") + (("n_trajectories", "1"),)
    run_dir = run_method(RunRequest(method_dir=PROJECT / "submissions" / "q0", track="synthetic", epochs=8.0,
                                    overrides=overrides, data_dir=synthetic_data, out=tmp_path / "ddp",
                                    progress=False, launch=two_ranks()))
    record = read(run_dir)
    assert record["status"] == "ok"
    assert [s["tag"] for s in record["snapshots"]] == [f"t0-c{c:03d}" for c in range(4)]
    assert {s["meta"]["rank"] for s in record["snapshots"]} == {0}  # the group's leader writes
    shards = record["metered"]["per_stream"]
    assert set(shards) == {"trajectory0[0/2]", "trajectory0[1/2]"}
    assert shards["trajectory0[0/2]"] == shards["trajectory0[1/2]"]
    assert 7.8 < record["metered"]["epochs"] <= 8.0  # the whole budget, counted once over both shards


def test_distributed_run_resumes_after_kill_9(synthetic_data, tmp_path, monkeypatch):
    """kill -9 the whole job once both ranks have checkpointed, resume it: the same run as a straight one."""
    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    common = dict(method_dir=PROJECT / "submissions" / "q0", track="synthetic", epochs=8.0, seed=5,
                  overrides=TINY_Q0, data_dir=synthetic_data, progress=False)
    straight = read(run_method(RunRequest(out=tmp_path / "straight", launch=two_ranks(), **common)))

    launch = two_ranks()
    run_dir = prepare_run(RunRequest(out=tmp_path / "killed", launch=launch, **common))
    runner = train_in_subprocess(run_dir)
    checkpoints = [run_dir / "checkpoint" / "rank0.json", run_dir / "checkpoint" / "rank1.json"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and runner.poll() is None:
        if all(p.exists() for p in checkpoints):
            break
        time.sleep(0.05)
    assert runner.poll() is None, "the job ended before it could be killed"
    os.kill(runner.pid, signal.SIGKILL)  # the runner and its data server; the supervisor stops the ranks
    runner.wait()
    wait_until_gone(run_dir)
    assert not (run_dir / "train_result.json").exists()
    resumed = read(resume_run(run_dir, progress=False))
    assert resumed["status"] == "ok"
    assert resumed["metered"] == straight["metered"]
    assert sorted(s["tag"] for s in resumed["snapshots"]) == sorted(s["tag"] for s in straight["snapshots"])
    a, b = weights(tmp_path / "straight"), weights(run_dir)
    for tag in a:
        for name in a[tag]:
            assert (a[tag][name] - b[tag][name]).abs().max().item() <= 1e-5, (tag, name)


GREEDY_DDP = """
import torch.distributed as dist
group = ctx.rank_groups(1)
stream = ctx.train_stream("shared", batch_size=4, shard=(group.rank_in_group, group.size))
for x, y in stream:
    total = torch.tensor([float(x.sum())])
    dist.all_reduce(total, group=group.process_group)  # as DDP's gradient all-reduce would
"""


def test_shards_stepping_together_are_refused_together(make_method, synthetic_data, tmp_path, monkeypatch):
    """Past the budget every shard of a step is refused, so no rank is left waiting in an all-reduce."""
    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    method = make_method(GREEDY_DDP)
    run_dir = run_method(RunRequest(method_dir=method, track="synthetic", epochs=1.0, data_dir=synthetic_data,
                                    out=tmp_path / "run", progress=False, launch=two_ranks()))
    record = read(run_dir)
    assert record["status"] == "budget-exceeded"
    metered = record["metered"]
    assert metered["per_stream"]["shared[0/2]"] == metered["per_stream"]["shared[1/2]"]
    assert metered["epoch_tokens"] - 2 * 4 * 128 < metered["train_tokens"] <= metered["epoch_tokens"]


def test_two_nodes_meter_through_node_0s_server_and_match_one_process(synthetic_data, tmp_path, monkeypatch):
    """Two "nodes" on this machine (one process each, torchrun's static rendezvous): node 1 reaches node 0's
    data server over TCP, reads no data itself, and the run is the one-process run."""
    import subprocess
    import sys

    from harness.cluster.nodes import free_port_pair

    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    port = free_port_pair(free_port() & ~1)  # the data server listens on the port above torchrun's
    common = dict(method_dir=PROJECT / "submissions" / "q0", track="synthetic", epochs=8.0, seed=3,
                  overrides=TINY_Q0, data_dir=synthetic_data, progress=False)
    single = run_method(RunRequest(out=tmp_path / "single", **common))
    run_dir = tmp_path / "nodes"
    node1 = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(common["method_dir"]), "--track", "synthetic",
         "--out", str(run_dir), "--nnodes", "2", "--node-rank", "1", "--master-port", str(port), "--quiet"],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run_method(RunRequest(out=run_dir, launch=LaunchSpec(nnodes=2, node_rank=0, master_port=port), **common))
        output, _ = node1.communicate(timeout=120)
    finally:
        if node1.poll() is None:
            node1.kill()
    assert node1.returncode == 0, output
    a, b = read(single), read(run_dir)
    assert b["status"] == "ok", b["error"]
    assert (b["compute"]["world_size"], b["compute"]["hardware"]["nodes"]) == (2, 2)
    assert b["metered"] == a["metered"]
    ranks = {s["tag"]: s["meta"]["rank"] for s in b["snapshots"]}
    assert {tag for tag, rank in ranks.items() if rank == 1} == {t for t in ranks if t.startswith("t1-")}
    for sa, sb in zip(sorted(a["snapshots"], key=lambda s: s["tag"]), sorted(b["snapshots"], key=lambda s: s["tag"])):
        assert sa["val_loss"] == pytest.approx(sb["val_loss"], rel=1e-5)
    assert not (run_dir / "server.json").exists()  # the token is gone with the server


def test_a_node_joining_without_its_run_folder_is_told_what_to_give(tmp_path):
    with pytest.raises(Exception, match="--out RUN_DIR"):
        run_method(RunRequest(method_dir=PROJECT / "submissions" / "q0",
                              launch=LaunchSpec(nnodes=2, node_rank=1, master_port=free_port())))
