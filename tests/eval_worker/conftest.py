"""Fixtures for the evaluation worker: a prepared synthetic track, and method folders with model code."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data.store import TokenStore
from harness.formats.snapshots import SPEC, list_snapshots, load_snapshot_model, write_snapshot

SEQ_LEN = 128  # the synthetic track's
VOCAB = 512

# The method's own model code, as a new architecture would ship it: `builder = "mymodel:build"`.
MODEL_CODE = '''
import os
import time

import torch
import torch.nn as nn


class Causal(nn.Module):
    """logits[t] = head(e_t + mean(e_0..e_t)): a model whose output at t uses tokens 0..t only."""

    def __init__(self, vocab_size: int, dim: int = 16):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, dim)
        self.head = nn.Linear(dim, vocab_size)

    def mix(self, e):
        steps = torch.arange(1, e.shape[1] + 1, dtype=e.dtype, device=e.device)[None, :, None]
        return e + e.cumsum(1) / steps

    def forward(self, idx):
        return self.head(self.mix(self.emb(idx)))


class PeeksAhead(Causal):
    """Adds the next token's embedding at every position: it sees the future."""

    def forward(self, idx):
        e = self.emb(idx)
        ahead = torch.cat([e[:, 1:], torch.zeros_like(e[:, :1])], dim=1)
        return self.head(self.mix(e) + ahead)


class Remembers(Causal):
    """Raises one logit by the number of times it has already seen the window."""

    def __init__(self, vocab_size: int):
        super().__init__(vocab_size)
        self.seen = {}

    def forward(self, idx):
        logits = super().forward(idx).clone()
        for row, window in enumerate(idx.cpu()):
            key = window.numpy().tobytes()
            logits[row, :, 0] += 3.0 * self.seen.get(key, 0)
            self.seen[key] = self.seen.get(key, 0) + 1
        return logits


class PrefixMemory(Causal):
    """Remembers, for every prefix it has been shown, the token that followed, and raises that token's
    logit whenever the prefix comes again: between calls it would score windows it has seen (probes,
    re-scored windows) with the answer mixed in."""

    def __init__(self, vocab_size: int):
        super().__init__(vocab_size)
        self.memory = {}

    def forward(self, idx):
        logits = super().forward(idx).clone()
        for row, window in enumerate(idx.cpu().tolist()):
            for t in range(len(window)):
                follows = self.memory.get(tuple(window[: t + 1]))
                if follows is not None:
                    logits[row, t, follows] += 5.0
            for t in range(len(window) - 1):
                self.memory[tuple(window[: t + 1])] = window[t + 1]
        return logits


def build_prefix_memory(config):
    return PrefixMemory(int(config["vocab_size"]))


class Short(Causal):
    """Drops the last position: logits of the wrong shape."""

    def forward(self, idx):
        return super().forward(idx)[:, :-1]


class FailsLater(Causal):
    """Fails on a batch that starts a window with the last vocabulary id (the test puts one in its second
    batch, while the harness has the third in flight); answers every other batch. (It cannot count calls:
    on a CPU every batch runs in a fresh fork.)"""

    def forward(self, idx):
        if bool((idx[:, 0] == self.emb.num_embeddings - 1).any()):
            raise RuntimeError("refused the second batch")
        return super().forward(idx)


def build(config):
    return Causal(int(config["vocab_size"]))


def build_fails_later(config):
    return FailsLater(int(config["vocab_size"]))


def build_peeks(config):
    return PeeksAhead(int(config["vocab_size"]))


def build_remembers(config):
    return Remembers(int(config["vocab_size"]))


def build_short(config):
    return Short(int(config["vocab_size"]))


def build_reader(config):
    with open(config["path"], "rb") as handle:  # the validation tokens: must be out of the worker's reach
        handle.read(16)
    return Causal(int(config["vocab_size"]))


def build_loud(config):
    raise ValueError("\x1b[2J\x1b[31mcleared your terminal")


def build_crash(config):
    os._exit(3)


def build_sleeper(config):
    time.sleep(600)


class SlowForward(Causal):
    """Builds at once, then holds every forward: a model that would keep an unbounded evaluation forever."""

    def forward(self, idx):
        time.sleep(600)
        return super().forward(idx)


def build_slow_forward(config):
    return SlowForward(int(config["vocab_size"]))


COUNT = 0  # module-level state: a fresh process starts it at 0


class Counted(Causal):
    """Adds COUNT to every logit: the logits show how many models this process built before."""

    def forward(self, idx):
        return super().forward(idx) + float(COUNT)


def build_counted(config):
    global COUNT
    COUNT += 1
    return Counted(int(config["vocab_size"]))


def build_writer(config):
    outcomes = []
    for target in config["targets"]:
        try:
            with open(target, "w") as handle:
                handle.write("left for the next snapshot")
            outcomes.append("written")
        except OSError as exc:
            outcomes.append(type(exc).__name__)
    raise RuntimeError("writes: " + ",".join(outcomes))


def build_signaller(config):
    outcomes = []
    for pid in [os.getppid(), *config["pids"]]:
        try:
            os.kill(pid, 0)
            outcomes.append("reached")
        except OSError as exc:
            outcomes.append(type(exc).__name__)
    for pid in config["pids"]:
        try:
            with open(f"/proc/{pid}/mem", "rb"):  # ptrace-attach access: the process's memory
                outcomes.append("opened")
        except OSError as exc:
            outcomes.append(type(exc).__name__)
    raise RuntimeError("outcomes: " + ",".join(outcomes))


def build_daemon(config):
    """Leaves a detached process behind (double fork, new session) before building the model."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.closerange(3, 1 << 16)
            with open("daemon.pid.tmp", "w") as handle:  # in the worker's scratch, its working directory
                handle.write(str(os.getpid()))
            os.rename("daemon.pid.tmp", "daemon.pid")
            time.sleep(600)
        os._exit(0)
    os.wait()
    return Causal(int(config["vocab_size"]))


def build_threads(config):
    x = torch.randn(64, 64)
    (x @ x).sum()
    raise RuntimeError(f"threads: {torch.get_num_threads()}")
'''


@pytest.fixture
def method_dir(tmp_path, monkeypatch) -> Path:
    """A method folder holding mymodel.py; importable in this process too, for the in-process reference."""
    folder = tmp_path / "method"
    folder.mkdir()
    (folder / "mymodel.py").write_text(textwrap.dedent(MODEL_CODE))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "mymodel", raising=False)
    return folder


@pytest.fixture
def run_dir(tmp_path) -> Path:
    folder = tmp_path / "run"
    (folder / "snapshots").mkdir(parents=True)
    return folder


def causal_model(seed: int):
    import mymodel

    torch.manual_seed(seed)
    return mymodel.Causal(VOCAB)


def add_snapshot(run_dir: Path, tag: str, model, builder: str = "mymodel:build", config: dict | None = None,
                 train_tokens: int = 100):
    spec = {"builder": builder, "config": {"vocab_size": VOCAB, **(config or {})}}
    return write_snapshot(run_dir / "snapshots", tag, model, spec, epochs=train_tokens / 100, train_tokens=train_tokens,
                          meta={})


def stamp_weights_hash(snapshot_folder: Path, digest: str) -> None:
    """What the data server does when it takes a snapshot in: record the weights' sha256 in spec.json."""
    path = snapshot_folder / SPEC
    spec = json.loads(path.read_text())
    spec["weights_sha256"] = digest
    path.write_text(json.dumps(spec))


def val_windows(data: Path) -> np.ndarray:
    return np.asarray(TokenStore.open(data, "val").windows(SEQ_LEN))


def float64_logp(model, windows: np.ndarray) -> np.ndarray:
    """log p(target) of every window, (n, T), in float64 from the in-process model's logits."""
    x = torch.from_numpy(np.asarray(windows, dtype=np.int64))
    with torch.no_grad():
        logits = model(x[:, :-1]).double()
    return torch.log_softmax(logits, dim=-1).gather(-1, x[:, 1:, None]).squeeze(-1).numpy()


def reference_logp(run_dir: Path, tag: str, windows: np.ndarray) -> np.ndarray:
    """The independent in-process reference: load_snapshot_model, then float64 arithmetic."""
    snap = next(s for s in list_snapshots(run_dir / "snapshots") if s.tag == tag)
    return float64_logp(load_snapshot_model(snap), windows)
