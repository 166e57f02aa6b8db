"""The harness keeps the worker busy: the next batch is sent before the last one's logits are read.

Checked here: the order and the bound of batches in flight (with a recording model), that a caller who
stops early leaves nothing in flight, that requests and replies bigger than the socket's buffers cannot
wait on each other (a deadlock, before the worker read its requests on a thread of its own), and that a
worker failing with a batch in flight behind the failing one still reports its own reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.eval.remote_model import InvalidSnapshot, RemoteModel
from harness.eval.logprobs import model_outputs, token_logprobs
from tests.eval_worker.conftest import VOCAB, add_snapshot, causal_model, float64_logp


class Recording:
    """A pipelined model in this process: logits = a fixed function of the inputs; it notes what is in flight."""

    pipelined = True
    training = False

    def __init__(self):
        self.in_flight: list[torch.Tensor] = []
        self.most_in_flight = 0
        self.events: list[str] = []

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    @staticmethod
    def logits(inputs):
        return torch.nn.functional.one_hot(inputs % 7, 7).float() * 3.0

    def submit(self, inputs):
        self.in_flight.append(inputs)
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        self.events.append("submit")

    def collect(self):
        self.events.append("collect")
        return self.logits(self.in_flight.pop(0))


def test_two_batches_are_in_flight_and_the_logits_come_back_in_order():
    model = Recording()
    batches = [(k, None, torch.full((2, 5), k)) for k in range(5)]
    outputs = list(model_outputs(model, iter(batches)))
    assert [item[0] for item, _ in outputs] == list(range(5))
    for (k, _, inputs), logits in outputs:
        assert torch.equal(logits, Recording.logits(inputs))
    assert model.most_in_flight == 2
    assert model.events[:3] == ["submit", "submit", "collect"]  # the second batch goes out before the first returns


def test_token_logprobs_through_a_pipelined_model_equals_float64():
    windows = np.random.default_rng(0).integers(0, 7, size=(37, 9))
    got = token_logprobs(Recording(), windows, batch_size=4)
    x = torch.from_numpy(windows)
    expected = torch.log_softmax(Recording.logits(x[:, :-1]).double(), -1).gather(-1, x[:, 1:, None]).squeeze(-1)
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-6)


def test_a_caller_that_stops_early_leaves_nothing_in_flight():
    model = Recording()
    outputs = model_outputs(model, iter([(k, None, torch.full((1, 3), k)) for k in range(6)]))
    next(outputs)
    outputs.close()
    assert model.in_flight == []


def test_requests_and_replies_bigger_than_the_socket_buffers_do_not_wait_on_each_other(run_dir, method_dir,
                                                                                      monkeypatch):
    # Socket buffers of 64 KB (a kernel's default is about 200 KB), 4 MB of token ids per request and 16 MB
    # of logits per reply: the second request can only go out while the worker still sends the first reply.
    import socket

    from harness.wire import framing

    def narrow(sock, nbytes=0):
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, 64 << 10)

    monkeypatch.setattr(framing, "widen_buffers", narrow)
    import mymodel

    torch.manual_seed(1)
    model = mymodel.Causal(4)
    snap = add_snapshot(run_dir, "wide", model, config={"vocab_size": 4})
    inputs = torch.randint(0, 4, (4, 1 << 18))
    with RemoteModel(snap, method_dir=method_dir, builder_roots=(), timeout_s=30) as remote:
        remote.submit(inputs)
        remote.submit(inputs.flip(1))
        first, second = remote.collect(), remote.collect()
    with torch.no_grad():
        assert torch.equal(first, model(inputs)) and torch.equal(second, model(inputs.flip(1)))


def test_a_worker_that_fails_with_batches_in_flight_reports_its_own_reason(run_dir, method_dir):
    snap = add_snapshot(run_dir, "later", causal_model(1), builder="mymodel:build_fails_later")
    windows = np.random.default_rng(1).integers(0, VOCAB - 1, size=(12, 17))
    windows[3, 0] = VOCAB - 1  # the first window of the second batch of 3: the model refuses that batch
    with RemoteModel(snap, method_dir=method_dir, builder_roots=(), timeout_s=60) as remote:
        with pytest.raises(InvalidSnapshot, match="RuntimeError: refused the second batch"):
            token_logprobs(remote, windows, batch_size=3)
    # and the first batch, answered before the failure, was the model's own
    ok = add_snapshot(run_dir, "ok", causal_model(1))
    with RemoteModel(ok, method_dir=method_dir, builder_roots=(), timeout_s=60) as remote:
        np.testing.assert_allclose(token_logprobs(remote, windows, batch_size=3),
                                   float64_logp(causal_model(1), windows), atol=2e-5)
