"""Requests through a real data server: batches metered before they are sent, log lines that want no
answer still written in order, and divergence still caught on either side of the socket."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from harness.confined.context import ContractError, Diverged, RunContext
from harness.errors import BudgetExhausted
from harness.data.store import TokenStore
from harness.server.meter import StreamReader
from harness.server import DataServer, ServerSpec
from harness.wire.framing import Channel
from harness.rules.tracks import get_track
from harness.confined.method_process import connect

BATCH = 8


def _serve(synthetic_data, tmp_path):
    """A data server in this process (its own threads), one rank's connection to it, and the run it sent."""
    server = DataServer(ServerSpec(run_dir=tmp_path / "run", data_dir=synthetic_data, track=get_track("synthetic"),
                                   budget=4.0, seed=3, hparams={}, device="cpu", method_dir=tmp_path,
                                   entry="train:main", fitness_docs=0, progress=False))
    channel = Channel(connect(server.start()))
    channel.send({"op": "hello", "token": server.token, "rank": 0, "pid": os.getpid()})
    reply, _ = channel.recv()
    return server, channel, reply["run"]


@pytest.fixture
def served(synthetic_data, tmp_path):
    """A data server and the method's side of one rank's connection."""
    server, channel, run = _serve(synthetic_data, tmp_path)
    yield server, channel, RunContext(channel, run)
    server.stop()


def _metrics(server) -> list[dict]:
    return [json.loads(line) for line in server.layout.metrics(0).read_text().splitlines()]


def test_batches_are_the_meters_own_and_metered_before_they_arrive(served, synthetic_data):
    server, _, ctx = served
    seq_len = get_track("synthetic").seq_len
    store = TokenStore.open(synthetic_data, "train")
    reference = StreamReader(store, seq_len, 3, "main")  # same seed and id: window k * BATCH starts batch k
    stream = ctx.train_stream("main", BATCH)
    for k in range(1, 6):
        inputs, targets = next(stream)
        want = reference.batch((k - 1) * BATCH, BATCH).astype(np.int64)
        assert str(inputs.dtype) == str(targets.dtype) == "torch.int64"  # as the method is promised
        assert np.array_equal(inputs.numpy(), want[:, :-1]) and np.array_equal(targets.numpy(), want[:, 1:])
        assert ctx.epochs == k * BATCH * seq_len / store.n_tokens  # charged by the time it arrived
    inputs[0, 0] = -1  # the method's tensors are its own: the next batch does not land in them
    assert np.array_equal(next(stream)[0].numpy(), reference.batch(5 * BATCH, BATCH)[:, :-1])


def test_a_whole_step_in_one_request_is_the_same_batches_metered_the_same(served, synthetic_data):
    """``next_tokens(3)``: one round trip for three microbatches, the windows three ``next_batch`` calls get,
    charged as three batches; a request the budget cannot fully grant charges what it granted and raises."""
    server, channel, ctx = served
    seq_len = get_track("synthetic").seq_len
    store = TokenStore.open(synthetic_data, "train")
    reference = StreamReader(store, seq_len, 3, "main")
    stream = ctx.train_stream("main", BATCH)
    sent = []
    send = channel.send
    channel.send = lambda header, payload=b"": (sent.append(header.get("op")), send(header, payload))[1]
    tokens = stream.next_tokens(3)
    assert sent == ["batch"]  # one round trip
    assert tokens.shape == (3, BATCH, seq_len + 1) and str(tokens.dtype) == "torch.int64"
    assert tokens.is_contiguous()
    for k in range(3):
        assert np.array_equal(tokens[k].numpy(), reference.batch(k * BATCH, BATCH).astype(np.int64))
    assert ctx.epochs == 3 * BATCH * seq_len / store.n_tokens
    assert stream.windows_served == 3 * BATCH
    inputs, _ = next(stream)  # the single-batch path continues where the step left off
    assert np.array_equal(inputs.numpy(), reference.batch(3 * BATCH, BATCH)[:, :-1])
    # the budget (4 epochs) holds a whole number of batches; ask for more than remain in one request
    per_batch = BATCH * seq_len
    left = (int(4.0 * store.n_tokens) - 4 * per_batch) // per_batch
    with pytest.raises(BudgetExhausted):
        stream.next_tokens(left + 5)
    assert ctx.epochs * store.n_tokens == (4 + left) * per_batch  # the granted ones are charged, no more
    with pytest.raises(ContractError, match="count must be an integer from 1"):
        ctx._call({"op": "batch", "stream": "main", "batch_size": BATCH, "shard": None, "count": 0})


def test_unanswered_log_lines_are_written_in_order_between_batches(served):
    server, _, ctx = served
    seq_len = get_track("synthetic").seq_len
    stream = ctx.train_stream("main", BATCH)
    for step in range(1, 41):
        next(stream)
        ctx.log(step=step, loss=3.0 - step / 100, note="x")
    ctx.snapshot_tags()  # any answered request: every line sent before it has been handled
    lines = _metrics(server)
    assert [line["step"] for line in lines] == list(range(1, 41))
    assert [line["tokens"] for line in lines] == [step * BATCH * seq_len for step in range(1, 41)]
    assert lines[-1]["loss"] == pytest.approx(2.6)


def test_a_non_finite_loss_still_ends_the_run_as_diverged(served):
    server, channel, ctx = served
    next(ctx.train_stream("main", BATCH))
    ctx.log(loss=2.0)
    with pytest.raises(Diverged, match="nan"):
        ctx.log(loss=float("nan"))
    channel.send({"op": "end", "status": "diverged"})
    channel.recv()
    assert server.outcome().status == "diverged"
    assert [line["loss"] for line in _metrics(server)] == [2.0, "nan"]


def test_a_method_that_skips_the_client_check_is_caught_by_the_server(served):
    server, channel, ctx = served
    channel.send({"op": "log", "entry": {"train_loss": "inf"}, "reply": False})  # raw, no answer wanted
    channel.send({"op": "end", "status": "ok"})
    assert channel.recv()[0] == {"ok": True}  # the end's answer: the log line got none
    assert server.outcome().status == "diverged"


def test_a_malformed_unanswered_line_ends_the_run_and_keeps_what_was_written(served):
    server, channel, ctx = served
    ctx.log(step=1)
    channel.send({"op": "log", "entry": [1, 2], "reply": False})  # nobody waits for an answer: still a violation
    with pytest.raises(ContractError, match="a log entry must be a mapping"):
        ctx._call({"op": "status"})
    assert server.stop_requested.is_set()
    outcome = server.outcome()
    assert outcome.status == "invalid" and outcome.error["type"] == "ProtocolViolation"
    assert [line.get("step") for line in _metrics(server)] == [1]  # the line before it is kept


def test_a_request_sent_after_the_server_closed_the_channel_still_reads_why(served):
    """The worst interleaving of the test above: the server has stopped the run and closed this channel before
    the method's next request leaves, so the send meets a broken pipe. The reason must still reach the method."""
    import time

    server, channel, ctx = served
    channel.send({"op": "log", "entry": [1, 2], "reply": False})
    assert server.stop_requested.wait(10)
    deadline = time.monotonic() + 10
    while any(c.sock.fileno() != -1 for c in server._channels) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the server's end is closed
    assert all(c.sock.fileno() == -1 for c in server._channels)
    with pytest.raises(ContractError, match="a log entry must be a mapping"):
        ctx._call({"op": "status"})


def _two_ranks(synthetic_data, tmp_path):
    from harness.common.distributed import RankInfo

    server = DataServer(ServerSpec(run_dir=tmp_path / "run2", data_dir=synthetic_data, track=get_track("synthetic"),
                                   budget=4.0, seed=3, hparams={}, device="cpu", method_dir=tmp_path,
                                   entry="train:main", fitness_docs=0, progress=False, world_size=2))
    address = server.start()
    contexts = []
    for rank in range(2):
        channel = Channel(connect(address))
        channel.send({"op": "hello", "token": server.token, "rank": rank, "pid": os.getpid()})
        reply, _ = channel.recv()
        contexts.append(RunContext(channel, reply["run"], rank_info=RankInfo(rank, 2, rank)))
    return server, contexts


def test_gather_waits_for_every_rank_and_fails_fast_when_one_ends_without_it(synthetic_data, tmp_path):
    import threading
    import time

    server, (a, b) = _two_ranks(synthetic_data, tmp_path)
    try:
        got = {}
        thread = threading.Thread(target=lambda: got.setdefault("a", a.gather("finals", ["t0"])))
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive()  # rank 0 waits on the server for rank 1, however long it takes
        assert b.gather("finals", ["t1"]) == [["t0"], ["t1"]]
        thread.join(timeout=10)
        assert got["a"] == [["t0"], ["t1"]]
        with pytest.raises(ContractError, match="already given a value"):
            a.gather("finals", [])
        assert server._gathers == {}  # every rank has read them: the values are not kept for the run
        thread = threading.Thread(target=lambda: got.setdefault("late", _catch(lambda: a.gather("scores", {"x": 1.0}))))
        thread.start()
        b._channel.send({"op": "end", "status": "ok"})
        b._channel.recv()
        thread.join(timeout=10)
        assert not thread.is_alive() and "ended without taking part" in got["late"]
    finally:
        server.stop()


def _catch(action) -> str:
    try:
        action()
        return "no error"
    except ContractError as exc:
        return str(exc)


def test_a_second_hello_for_a_rank_is_refused_and_makes_the_run_invalid(served):
    server, channel, ctx = served
    next(ctx.train_stream("main", BATCH))
    again = Channel(connect(server.address))
    again.send({"op": "hello", "token": server.token, "rank": 0, "pid": 1})
    reply, _ = again.recv()
    assert not reply["ok"] and "already connected" in reply["error"]["message"]
    outcome = server.outcome()
    assert outcome.status == "invalid" and outcome.error["type"] == "ProtocolViolation"
    assert outcome.train_tokens == BATCH * get_track("synthetic").seq_len  # the first connection's draw counts
    assert [i["kind"] for i in outcome.incidents] == ["hello-refused", "violation", "stopped"]
    assert server.stop_requested.is_set()


def test_a_lost_connection_stops_the_job_and_a_failed_rank_does_too(synthetic_data, tmp_path):
    import time

    server, (a, b) = _two_ranks(synthetic_data, tmp_path)
    try:
        assert not server.stop_requested.is_set()
        a._channel.send({"op": "end", "status": "ok"})  # ending ok stops nothing: groups end on their own
        a._channel.recv()
        time.sleep(0.2)
        assert not server.stop_requested.is_set()
        b._channel.sock.close()  # rank 1's process dies without reporting
        assert server.stop_requested.wait(5)
        assert server.stop_reason()["rank"] == 1 and server.stop_reason()["error"]["type"] == "WorkerDied"
    finally:
        server.stop()


def test_an_outbox_entry_swapped_while_it_is_taken_is_refused(served):
    """The method may replace an outbox entry between the harness's check and its move: what is moved
    must be the file that was checked, or nothing is kept."""
    from harness.errors import RequestError
    from harness.server.intake import outbox_file, take

    server, channel, ctx = served
    entry = server.layout.outbox / "state.pt"
    entry.write_bytes(b"PK\x03\x04checked")
    path, info = outbox_file(server.layout.outbox, "state.pt")
    swap = server.layout.outbox / "swap.tmp"
    swap.write_bytes(b"PK\x03\x04swapped in")
    os.replace(swap, entry)  # same name, another file
    destination = server.layout.checkpoints / "taken.pt"
    with pytest.raises(RequestError, match="changed while the harness took it"):
        take(path, info, destination)
    assert not destination.exists()
    entry.unlink()
    entry.symlink_to(server.layout.snapshots)  # or a link put in its place
    with pytest.raises(RequestError, match="changed while the harness took it"):
        take(path, info, destination)
    assert not destination.exists()


def test_checkpoints_must_be_torch_save_files_and_links_are_never_followed(served, tmp_path):
    server, channel, ctx = served
    (server.layout.outbox / "note.pt").write_text("import os; os.system('echo owned')\n")
    with pytest.raises(ContractError, match="not a file written by torch.save"):
        ctx._call({"op": "checkpoint", "file": "note.pt"})
    assert not server.layout.checkpoint_index(0).exists()
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"PK\x03\x04")
    (server.layout.outbox / "link.pt").symlink_to(outside)
    with pytest.raises(ContractError, match="not a link"):
        ctx._call({"op": "checkpoint", "file": "link.pt"})
    assert outside.exists() and (server.layout.outbox / "link.pt").is_symlink()  # neither moved nor followed


def test_snapshots_past_the_runs_limit_are_refused(synthetic_data, tmp_path):
    """Every snapshot is evaluated, so their number is bounded (`--max-snapshots`)."""
    import torch

    server = DataServer(ServerSpec(run_dir=tmp_path / "run", data_dir=synthetic_data, track=get_track("synthetic"),
                                   budget=4.0, seed=3, hparams={}, device="cpu", method_dir=tmp_path,
                                   entry="train:main", fitness_docs=0, progress=False, max_snapshots=2))
    channel = Channel(connect(server.start()))
    channel.send({"op": "hello", "token": server.token, "rank": 0, "pid": os.getpid()})
    reply, _ = channel.recv()
    ctx = RunContext(channel, reply["run"])
    try:
        model = torch.nn.Linear(2, 2)
        spec = {"builder": "tiny:build", "config": {}}
        ctx.save_snapshot(model, "a", spec=spec)
        ctx.save_snapshot(model, "b", spec=spec)
        with pytest.raises(ContractError, match="limit of 2 snapshots"):
            ctx.save_snapshot(model, "c", spec=spec)
        assert ctx.snapshot_tags() == ["a", "b"]
        assert list(server.layout.outbox.iterdir()) == []  # the refused weights are not left behind
    finally:
        server.stop()


def test_a_snapshot_being_hashed_does_not_hold_the_servers_lock(served, monkeypatch):
    """Taking a snapshot in moves, checks and hashes up to 256 GiB. Under the server's lock that would hold up
    the runner's watch (the cap, the scheduler's warning, a failed rank) and every other rank's requests for
    as long as it takes: only the tag and the count are reserved under it."""
    import threading

    import torch

    import harness.server.dataserver as dataserver

    server, _, ctx = served
    hashing, release = threading.Event(), threading.Event()
    real_sha256 = dataserver.sha256_file

    def slow_sha256(path):
        hashing.set()
        release.wait(30)
        return real_sha256(path)

    monkeypatch.setattr(dataserver, "sha256_file", slow_sha256)
    saved = threading.Thread(target=ctx.save_snapshot, args=(torch.nn.Linear(2, 2), "big"),
                             kwargs={"spec": {"builder": "tiny:build", "config": {}}})
    saved.start()
    try:
        assert hashing.wait(30)
        free = server._lock.acquire(timeout=10)  # the runner's watch takes this lock every poll
        if free:
            server._lock.release()
        assert free, "the server's lock is held while a snapshot is hashed"
        assert server.stop_reason() is None and not (server.layout.snapshots / "big").exists()
    finally:
        release.set()
        saved.join(30)
    assert (server.layout.snapshots / "big" / "spec.json").is_file()
    assert [line.get("tag") for line in _metrics(server) if line.get("event") == "snapshot"] == ["big"]


_TREE_MEMBER = """
import json, sys
from harness.wire.framing import Channel
from harness.confined.method_process import connect
channel = Channel(connect(sys.argv[1]))
channel.send({"op": "hello", "token": sys.argv[2], "rank": 0, "pid": 0})
reply, _ = channel.recv()
print(json.dumps({"ok": reply.get("ok")}))
"""


def test_socket_serves_only_the_runs_process_tree(synthetic_data, tmp_path):
    """A process outside the run's tree that holds the socket's path and the token (a concurrent run's
    method that found both) is closed unread and recorded; the named tree's process is served."""
    import subprocess
    import sys
    from pathlib import Path

    from harness.wire.framing import ChannelClosed

    server = DataServer(ServerSpec(run_dir=tmp_path / "run", data_dir=synthetic_data, track=get_track("synthetic"),
                                   budget=4.0, seed=3, hparams={}, device="cpu", method_dir=tmp_path,
                                   entry="train:main", fitness_docs=0, progress=False))
    address = server.start(tree_only=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        member = subprocess.Popen([sys.executable, "-c", _TREE_MEMBER, address, server.token], env=env,
                                  stdout=subprocess.PIPE, text=True)
        server.admit_tree(member.pid)
        outsider = Channel(connect(address))  # this test's process: the right token, the wrong tree
        # closed unread: the hello itself may already meet a closed socket (BrokenPipeError) on a busy machine
        with pytest.raises((ChannelClosed, OSError)):
            outsider.send({"op": "hello", "token": server.token, "rank": 0, "pid": os.getpid()})
            outsider.recv()
        out, _ = member.communicate(timeout=60)
        assert member.returncode == 0
        assert json.loads(out.strip().splitlines()[-1]) == {"ok": True}
        refused = [i for i in server._incidents if i["kind"] == "connection-refused"]
        assert len(refused) == 1 and f"process {os.getpid()} is not one of this run's" in refused[0]["message"]
    finally:
        server.stop()


def test_in_tree_follows_parent_links(tmp_path):
    """A grandchild is in its grandparent's tree; the grandparent is not in the grandchild's; a process
    is in its own."""
    import subprocess
    import sys

    from harness.server.peers import in_tree

    script = "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); " \
             "print(p.pid, flush=True); p.wait()"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(child.stdout.readline())
        assert in_tree(grandchild, child.pid)
        assert in_tree(grandchild, os.getpid())
        assert in_tree(child.pid, child.pid)
        assert not in_tree(child.pid, grandchild)
        assert not in_tree(os.getpid(), child.pid)
    finally:
        subprocess.run(["pkill", "-P", str(child.pid)], check=False)  # the grandchild
        child.kill()
        child.wait()


def test_emptying_the_outbox_follows_no_link(served, tmp_path):
    """On resume the outbox is emptied: a link there (to a file or a folder outside) is removed, and what
    it pointed at is left whole."""
    server, _, _ = served
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "file").write_text("kept")
    outbox = server.layout.outbox
    os.symlink(outside / "keep", outbox / "folder-link")
    os.symlink(outside / "keep" / "file", outbox / "file-link")
    (outbox / "real").mkdir()
    os.symlink(outside, outbox / "real" / "inner-link")
    (outbox / "plain").write_text("x")
    server._clear_outbox()
    assert list(outbox.iterdir()) == []
    assert (outside / "keep" / "file").read_text() == "kept"


def test_a_checkpoint_keeps_the_gpus_generator_and_resume_restores_it(synthetic_data, tmp_path, monkeypatch):
    """Dropout on a GPU draws from the CUDA generator: a checkpoint without its state resumes with other
    masks. The CUDA calls are stood in for (no GPU here); the file goes through the real server."""
    import torch

    server, channel, run = _serve(synthetic_data, tmp_path)
    ctx = RunContext(channel, run)
    cuda_state = torch.arange(16, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: cuda_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    try:
        ctx.checkpoint({"step": 7})
        index = json.loads(server.layout.checkpoint_index(0).read_text())
        run = {**run, "resume_file": str(server.layout.checkpoints / index["state_file"])}
        resumed = RunContext(channel, run)
        assert resumed.resume_state() == {"step": 7}
        assert len(restored) == 1 and restored[0][1] == 1 and torch.equal(restored[0][0], cuda_state)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # the same checkpoint where GPU 1 is not visible
        with pytest.raises(ContractError, match="GPU 1, which this process does not see"):
            RunContext(channel, run).resume_state()
    finally:
        server.stop()


def test_a_rank_that_died_of_the_runners_signal_is_an_interruption(synthetic_data, tmp_path):
    """A scheduler signals every process of its job: a rank's connection may drop before the runner has
    handled its own SIGTERM (seen with two torchrun ranks under Slurm). Only when the runner was
    interrupted is that drop an interruption; otherwise the worker died."""
    server, channel, _ = _serve(synthetic_data, tmp_path)
    try:
        channel.close()  # the rank's process is gone without reporting
        assert server.stop_requested.wait(10)
        terminated = {"reason": "terminated"}
        assert server.outcome(terminated).error["type"] == "WorkerDied"
        interrupted = server.outcome(terminated, interrupted=True)
        assert interrupted.status == "failed" and interrupted.error["type"] == "Interrupted"
        assert "reached the method's processes first" in interrupted.error["message"]
    finally:
        server.stop()


def test_a_run_past_its_gather_keys_is_invalid(synthetic_data, tmp_path):
    """Each finished gather key's name is kept (a key is used once), so their number is bounded."""
    from harness.wire.limits import ProtocolLimits

    server = DataServer(ServerSpec(run_dir=tmp_path / "run", data_dir=synthetic_data, track=get_track("synthetic"),
                                   budget=4.0, seed=3, hparams={}, device="cpu", method_dir=tmp_path,
                                   entry="train:main", fitness_docs=0, progress=False,
                                   limits=ProtocolLimits(max_gather_keys=2)))
    channel = Channel(connect(server.start()))
    try:
        channel.send({"op": "hello", "token": server.token, "rank": 0, "pid": os.getpid()})
        channel.recv()
        for key in ("a", "b", "c"):
            channel.send({"op": "gather", "key": key, "value": key})
            reply, _ = channel.recv()
        assert reply["ok"] is False and "at most 2 are allowed" in reply["error"]["message"]
        assert server.stop_requested.wait(10)
        outcome = server.outcome()
        assert outcome.status == "invalid" and outcome.error["type"] == "ProtocolViolation"
    finally:
        server.stop()
