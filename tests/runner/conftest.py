"""Fixtures for runner tests: a prepared synthetic track and method directories written on the fly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


METHOD_TOML = """
[method]
name = "{name}"
description = "test method"
authors = ["tests"]
entry = "train:main"
tracks = ["*"]

[hparams]
lr = 0.5
steps = 0
"""

PRELUDE = """
import math
import torch
import torch.nn.functional as F
from tests.runner.tiny_model import Bigram

def step(model, opt, inputs, targets):
    opt.zero_grad()
    loss = F.cross_entropy(model(inputs).reshape(-1, model.vocab_size), targets.reshape(-1))
    loss.backward()
    opt.step()
    return loss.item()
"""


@pytest.fixture
def make_method(tmp_path):
    """Write a method directory whose train.py body is `body` (indented into main(ctx))."""

    def make(body: str, name: str = "tiny") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "method.toml").write_text(METHOD_TOML.format(name=name))
        code = PRELUDE + "\n\ndef main(ctx):\n" + textwrap.indent(textwrap.dedent(body), "    ")
        (folder / "train.py").write_text(code)
        return folder

    return make


PROJECT = Path(__file__).resolve().parents[2]


def train_in_subprocess(run_dir: Path) -> subprocess.Popen:
    """Train a prepared run folder in a process of its own (data server, supervisor, method), so a test can
    kill the whole runner with SIGKILL as a crash or a lost machine would."""
    code = ("import sys; from pathlib import Path; from harness.run.runner import train; "
            "train(Path(sys.argv[1]), resume=False, progress=False)")
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, str(run_dir)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_until_gone(run_dir: Path, timeout: float = 30.0) -> None:
    """After the runner was killed its supervisor stops the method's processes and writes its status."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (run_dir / "supervisor.json").exists():
        time.sleep(0.05)
    assert (run_dir / "supervisor.json").exists(), "the supervisor did not clean up after its runner died"
