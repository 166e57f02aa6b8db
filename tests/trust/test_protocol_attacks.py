"""The data server's protocol, driven from a rank's side of the socket with hand-made requests.
Each test is an attack that must be refused (the run ends invalid, or the request gets an error) without
the server crashing, hanging, or holding memory the protocol's bounds do not allow."""

from __future__ import annotations

import json
import os

import pytest

from harness.server import DataServer, ServerSpec
from harness.wire.framing import MAGIC, PREFIX, Channel
from harness.rules.tracks import get_track
from harness.confined.method_process import connect


def _serve(synthetic_data, tmp_path, world_size: int = 1):
    server = DataServer(ServerSpec(run_dir=tmp_path / "run", data_dir=synthetic_data, track=get_track("synthetic"),
                                   budget=4.0, seed=3, hparams={}, device="cpu", method_dir=tmp_path,
                                   entry="train:main", fitness_docs=0, progress=False, world_size=world_size))
    channel = Channel(connect(server.start()))
    channel.send({"op": "hello", "token": server.token, "rank": 0, "pid": os.getpid()})
    reply, _ = channel.recv()
    assert reply["ok"]
    return server, channel


@pytest.fixture
def served(synthetic_data, tmp_path):
    server, channel = _serve(synthetic_data, tmp_path)
    yield server, channel
    server.stop()


def _ask(channel, header) -> dict:
    channel.send(header)
    reply, _ = channel.recv()
    return reply


def test_gathered_values_do_not_pile_up_in_the_runner(served):
    """A `gather` value (up to 1 MiB, the gather header's limit) under a fresh key per request: kept for the
    rest of the run, they would grow the runner's memory until the host runs out (and no record is
    written). A value goes once every rank has read it; 64 requests must not leave more than 16 MiB."""
    server, channel = served
    value = "x" * ((1 << 20) - 200)
    for i in range(64):
        reply = _ask(channel, {"op": "gather", "key": f"k{i}", "value": value})
        if not reply["ok"]:
            return  # refused: bounded
    kept = sum(len(str(v)) for values in server._gathers.values() for v in values.values())
    assert kept <= 16 << 20, f"the runner keeps {kept:,} bytes of gathered values after 64 requests"


@pytest.mark.parametrize("frame", [
    b"XXXX" + b"\0" * 12,  # not this protocol
    PREFIX.pack(MAGIC, 3 << 30, 0),  # a 3 GB header
    PREFIX.pack(MAGIC, 2, 1 << 62),  # a payload (requests carry none)
    PREFIX.pack(MAGIC, 2, 0) + b"[]",  # not an object
    PREFIX.pack(MAGIC, 4000, 0) + b"[" * 2000 + b"]" * 2000,  # nesting past the recursion limit
    PREFIX.pack(MAGIC, 28, 0) + b'{"op":"status","x":Infinity}',
    PREFIX.pack(MAGIC, 19, 0) + b'{"op":"log","en":1e',  # truncated JSON
    PREFIX.pack(MAGIC, 2, 0) + b"\xff\xfe",  # not UTF-8
])
def test_malformed_frames_end_the_run_as_invalid(served, frame):
    server, channel = served
    channel.sock.sendall(frame)
    assert server.stop_requested.wait(10)
    outcome = server.outcome()
    assert outcome.status == "invalid" and outcome.error["type"] == "ProtocolViolation"


def test_a_truncated_frame_then_a_closed_socket_is_a_dead_rank_not_a_hang(served):
    server, channel = served
    channel.sock.sendall(PREFIX.pack(MAGIC, 100, 0) + b'{"op":')
    channel.sock.close()
    assert server.stop_requested.wait(10)
    assert server.outcome().status in ("failed", "invalid")


@pytest.mark.parametrize("header", [
    {"op": "batch", "stream": "main", "batch_size": 2 ** 70},
    {"op": "batch", "stream": "main", "batch_size": -1},
    {"op": "batch", "stream": "main", "batch_size": 8, "count": 2 ** 40},
    {"op": "batch", "stream": "main", "batch_size": 8, "shard": [5, 2]},
    {"op": "batch", "stream": "main", "batch_size": 8, "shard": [2 ** 63, 2 ** 64]},
    {"op": "batch", "stream": "main", "batch_size": 8, "shard": [-1, 1]},
    {"op": "batch", "stream": "x" * 201, "batch_size": 8},
    {"op": "batch", "stream": "main", "batch_size": 8.0},
    {"op": "batch", "stream": "main", "batch_size": True},
    {"op": "snapshot", "tag": "../../etc", "spec": {"builder": "a:b", "config": {}}, "file": "w.safetensors"},
    {"op": "snapshot", "tag": "ok", "spec": {"builder": "a:b", "config": {}}, "file": "../../run.json"},
    {"op": "snapshot", "tag": "ok", "spec": {"builder": "a:b", "config": {}}, "file": "/etc/passwd"},
    {"op": "checkpoint", "file": "../record.json"},
    {"op": "ensemble", "weights": {"nope": 1.0}},
    {"op": "ensemble", "weights": {}},
    {"op": "gather", "key": "", "value": 1},
    {"op": "no-such-op"},
])
def test_bad_requests_are_answered_with_an_error_and_charge_nothing(served, header):
    server, channel = served
    reply = _ask(channel, header)
    assert reply["ok"] is False
    assert server.ledger.served_targets() == 0
    assert _ask(channel, {"op": "status"})["ok"]  # the server still serves this rank


def test_requests_after_the_run_is_stopped_get_nothing(served):
    server, channel = served
    channel.send({"op": "log", "entry": {"loss": "not a number"}, "reply": False})  # ends the run
    assert server.stop_requested.wait(10)
    try:
        reply = _ask(channel, {"op": "batch", "stream": "main", "batch_size": 8})
        assert reply["ok"] is False
    except Exception:  # the server closed the channel: also nothing served
        pass
    assert server.ledger.served_targets() == 0


def test_a_rank_cannot_read_another_ranks_shard(synthetic_data, tmp_path):
    server = DataServer(ServerSpec(run_dir=tmp_path / "run2", data_dir=synthetic_data, track=get_track("synthetic"),
                                   budget=4.0, seed=3, hparams={}, device="cpu", method_dir=tmp_path,
                                   entry="train:main", fitness_docs=0, progress=False, world_size=2))
    address = server.start()
    try:
        channels = []
        for rank in range(2):
            channel = Channel(connect(address))
            channel.send({"op": "hello", "token": server.token, "rank": rank, "pid": os.getpid()})
            assert channel.recv()[0]["ok"]
            channels.append(channel)
        assert _ask(channels[0], {"op": "batch", "stream": "main", "batch_size": 8, "shard": [0, 2]})["ok"]
        reply = _ask(channels[1], {"op": "batch", "stream": "main", "batch_size": 8, "shard": [0, 2]})
        assert reply["ok"] is False  # rank 0's shard
        # a hello naming the other rank's number with the token is a second hello: refused, run invalid
        intruder = Channel(connect(address))
        intruder.send({"op": "hello", "token": server.token, "rank": 1, "pid": 1})
        assert intruder.recv()[0]["ok"] is False
        assert server.outcome().status == "invalid"
    finally:
        server.stop()


def test_a_huge_integer_loss_does_not_break_the_runners_metric_readers(served):
    """A loss of 400 digits is an int, finite, but no float: the server refuses it, and the runner's
    tracking follower does not die on one in a metrics file (math.isfinite of it raises OverflowError)."""
    from harness.run.tracking import numeric_fields

    server, channel = served
    reply = _ask(channel, {"op": "log", "entry": {"loss": 10 ** 400, "step": 1}})
    assert not reply["ok"] or "ended" in json.dumps(reply), reply
    assert "strictly between -2**63 and 2**63" in json.dumps(server._violation or reply), (server._violation, reply)
    assert numeric_fields({"loss": 10 ** 400, "lr": 0.5, "step": 3, "tokens": 9}) == {"lr": 0.5, "step": 3.0}
