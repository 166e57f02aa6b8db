"""Workers forked from the fork server: as isolated as fresh processes, stopped one by one, and giving the
same numbers bit for bit."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

import harness.eval.fork_server as fork_server
from harness.eval.remote_model import InvalidSnapshot, RemoteModel
from harness.eval.fork_server import ForkServer
from harness.sandbox import landlock_abi
from harness.sandbox.supervise import descendants
from harness.formats.snapshots import list_snapshots
from tests.eval_worker.conftest import VOCAB, add_snapshot, causal_model
from tests.eval_worker.test_evaluate import evaluate

pytestmark = pytest.mark.skipif(not fork_server.FORK_AVAILABLE, reason="this system cannot fork workers")
needs_landlock = pytest.mark.skipif(landlock_abi() == 0, reason="Landlock is unavailable on this kernel")
needs_scopes = pytest.mark.skipif(landlock_abi() < 6, reason="Landlock before ABI 6 does not scope signals")

TOKENS = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def server(method_dir):
    with ForkServer(method_dir=method_dir, builder_roots=()) as started:
        yield started


def snapshot(run_dir, tag, builder="mymodel:build", seed=1, **config):
    add_snapshot(run_dir, tag, causal_model(seed), builder=builder, config=config)
    return next(s for s in list_snapshots(run_dir / "snapshots") if s.tag == tag)


def remote(snap, method_dir, server, **kw) -> RemoteModel:
    return RemoteModel(snap, method_dir=method_dir, builder_roots=(), vocab_size=VOCAB, fork_server=server, **kw)


def live(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False


def live_below(pid: int) -> set[int]:
    return {p for p, state in descendants(pid).items() if state not in ("Z", "X")}


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
        return [int(p) for p in handle.read().split()]


def failure(model: RemoteModel) -> str:
    with pytest.raises(InvalidSnapshot) as caught:
        model.load()
    model.close()
    return str(caught.value)


def test_a_forked_worker_gives_the_fresh_workers_logits_bit_for_bit(run_dir, method_dir, server):
    snap = snapshot(run_dir, "a")
    with remote(snap, method_dir, server) as forked:
        got = forked(TOKENS)
        assert forked.forked and forked.sandbox["kind"] in ("landlock", "none")
    with remote(snap, method_dir, None) as fresh:
        expected = fresh(TOKENS)
        assert not fresh.forked
    assert torch.equal(got, expected)


def test_module_state_of_one_snapshot_does_not_reach_the_next(run_dir, method_dir, server):
    snap = snapshot(run_dir, "a", builder="mymodel:build_counted")
    logits = []
    for _ in range(2):
        with remote(snap, method_dir, server) as model:
            logits.append(model(TOKENS))
    local = causal_model(1).eval()
    with torch.no_grad():
        expected = local(TOKENS) + 1.0  # COUNT is 1 in a process that built one model
    assert torch.equal(logits[0], logits[1])
    torch.testing.assert_close(logits[0], expected, rtol=0, atol=1e-5)


@needs_landlock
def test_a_child_cannot_write_another_childs_scratch_nor_the_zygotes(run_dir, method_dir, server):
    other = remote(snapshot(run_dir, "a"), method_dir, server).load()  # alive while the writer runs
    zygote_scratch = other._private.parent
    targets = [str(other._private / "note"), str(zygote_scratch / "note"),
               str(zygote_scratch / "status" / "c0.json"), "mine"]
    writer = remote(snapshot(run_dir, "w", builder="mymodel:build_writer", targets=targets), method_dir, server)
    reason = failure(writer)
    assert "writes: PermissionError,PermissionError,PermissionError,written" in reason
    assert not (other._private / "note").exists() and not (zygote_scratch / "note").exists()
    other(TOKENS)  # the other child is untouched
    other.close()


@needs_scopes
def test_a_child_cannot_signal_or_inspect_its_keeper_the_zygote_or_another_child(run_dir, method_dir, server):
    other = remote(snapshot(run_dir, "a"), method_dir, server).load()
    other_keeper = other._supervisor.pid
    (other_worker,) = children(other_keeper)
    pids = [server.zygote_pid(), other_keeper, other_worker]
    signaller = remote(snapshot(run_dir, "s", builder="mymodel:build_signaller", pids=pids), method_dir, server)
    reason = failure(signaller)
    # own keeper, zygote, other keeper, other worker: signals refused; then /proc/<pid>/mem (ptrace) of the last three
    assert "outcomes: " + ",".join(["PermissionError"] * 7) in reason
    other(TOKENS)
    other.close()


def test_a_hanging_child_is_killed_at_its_timeout_alone(run_dir, method_dir, server):
    other = remote(snapshot(run_dir, "a"), method_dir, server).load()
    before = other(TOKENS)
    sleeper = remote(snapshot(run_dir, "z", builder="mymodel:build_sleeper"), method_dir, server, timeout_s=3.0)
    started = time.monotonic()
    reason = failure(sleeper)
    assert "timed out (per-snapshot limit 3 s)" in reason and time.monotonic() - started < 20
    zygote = server.zygote_pid()
    assert live(zygote)
    assert live_below(zygote) == {other._supervisor.pid, *children(other._supervisor.pid)}  # the sleeper is gone
    assert torch.equal(other(TOKENS), before)  # the other lane goes on
    other.close()
    with remote(snapshot(run_dir, "b"), method_dir, server) as later:  # and the zygote still forks
        later(TOKENS)


def test_a_detached_leftover_is_gone_after_close(run_dir, method_dir, server):
    model = remote(snapshot(run_dir, "d", builder="mymodel:build_daemon"), method_dir, server).load()
    model(TOKENS)
    pid_file = model._private / "daemon.pid"
    for _ in range(200):
        if pid_file.exists():
            break
        time.sleep(0.02)
    daemon = int(pid_file.read_text())
    keeper = model._supervisor.pid
    assert live(daemon) and os.getsid(daemon) != os.getsid(keeper)  # detached: a session of its own
    model.close()
    assert not live(daemon) and not live(keeper)
    assert live_below(server.zygote_pid()) == set()


def test_closing_the_server_ends_the_zygote_and_every_child(run_dir, method_dir):
    server = ForkServer(method_dir=method_dir, builder_roots=()).start()
    model = remote(snapshot(run_dir, "a"), method_dir, server).load()
    zygote, keeper = server.zygote_pid(), model._supervisor.pid
    worker = children(keeper)[0]
    server.close()
    assert not any(live(p) for p in (zygote, keeper, worker))
    with pytest.raises(InvalidSnapshot):
        model(TOKENS)
    model.close()


@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_forked_worker_runs_torch_on_the_threads_it_is_given(run_dir, method_dir, monkeypatch, threads):
    monkeypatch.setenv("SLOWRUN_NUM_THREADS", threads)  # passed on to the zygote, applied in each child
    with ForkServer(method_dir=method_dir, builder_roots=()) as server:
        reason = failure(remote(snapshot(run_dir, "t", builder="mymodel:build_threads"), method_dir, server))
    assert f"threads: {threads}" in reason


def test_a_zygote_that_cannot_start_leaves_workers_to_fresh_processes(run_dir, method_dir, monkeypatch):
    monkeypatch.setenv("SLOWRUN_SANDBOX", "off")
    snap = snapshot(run_dir, "a")
    with ForkServer(method_dir=method_dir, builder_roots=(), require_sandbox=True) as server:
        model = remote(snap, method_dir, server, require_sandbox=True)
        reason = failure(model)
        assert not model.forked and "SandboxError: a sandbox is required" in reason
        assert "SandboxError" in server.broken
    monkeypatch.delenv("SLOWRUN_SANDBOX")


def test_evaluation_through_the_fork_server_equals_fresh_processes_bit_for_bit(run_dir, method_dir, synthetic_data,
                                                                              monkeypatch, tmp_path):
    add_snapshot(run_dir, "a", causal_model(1), train_tokens=100)
    add_snapshot(run_dir, "b", causal_model(2), train_tokens=200)
    spawned = []
    spawn = ForkServer.spawn
    monkeypatch.setattr(ForkServer, "spawn", lambda self: spawned.append(1) or spawn(self))
    forked = evaluate(run_dir, synthetic_data, method_dir, fork_server=True)
    assert len(spawned) == 2  # both snapshots' workers were forked
    fresh_run = tmp_path / "fresh"
    (fresh_run / "snapshots").mkdir(parents=True)
    add_snapshot(fresh_run, "a", causal_model(1), train_tokens=100)
    add_snapshot(fresh_run, "b", causal_model(2), train_tokens=200)
    fresh = evaluate(fresh_run, synthetic_data, method_dir, fork_server=False)
    assert len(spawned) == 2
    for tag in ("a", "b"):
        for split in ("val", "fit"):
            assert np.array_equal(np.load(run_dir / "eval" / f"{tag}.{split}.npy"),
                                  np.load(fresh_run / "eval" / f"{tag}.{split}.npy"))
    assert forked["snapshots"] == fresh["snapshots"]
