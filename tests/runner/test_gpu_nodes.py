"""GPUs are opened by the runner, unsandboxed, before any sandboxed process needs them, on every path:
a run's node 0, the other nodes of a job, and `slowrun eval`."""

from __future__ import annotations

import json

import pytest
import torch

import harness.run.runner as runner
from harness.common.distributed import LaunchSpec
from harness.common.gpu_nodes import open_gpus
from harness.formats.run_spec import write_run_spec
from tests.run_specs import run_spec


def write_spec(run_dir, device: str) -> None:
    """A run.json for `device`; nothing else of the run exists (the GPUs are opened before anything is read)."""
    write_run_spec(run_dir, run_spec(device=device, method_dir=str(run_dir), data_dir=str(run_dir)))


def test_cpu_runs_touch_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "init", lambda: pytest.fail("CUDA initialised for a CPU run"))
    assert open_gpus("cpu") is None


def test_cuda_is_initialised_and_problems_are_said(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "init", lambda: calls.append("init"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert open_gpus("cuda:3") is None and calls == ["init"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert open_gpus("cuda") == "CUDA reports no device"
    monkeypatch.setattr(torch.cuda, "init", lambda: (_ for _ in ()).throw(RuntimeError("no driver")))
    assert "RuntimeError: no driver" in open_gpus("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "sees no CUDA device" in open_gpus("cuda")


class Opened(Exception):
    """Raised by the stand-in: the path opened the GPUs (and got no further)."""


@pytest.fixture
def opened(monkeypatch):
    def stand_in(device):
        raise Opened(device)

    monkeypatch.setattr(runner, "open_gpus_or_warn", stand_in)


def test_another_node_opens_its_gpus_before_it_waits_for_node_0(opened, tmp_path):
    request = runner.RunRequest(method_dir=tmp_path, track="synthetic", epochs=1.0, out=tmp_path / "run",
                                device="cuda", launch=LaunchSpec(nproc_per_node=8, nnodes=2, node_rank=1))
    with pytest.raises(Opened, match="cuda"):
        runner.join_run(request)


def test_slowrun_eval_opens_the_gpus_before_evaluating(opened, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runner.TRAIN_RESULT).write_text(json.dumps({"status": "ok"}))
    write_spec(run_dir, "cuda:0")
    with pytest.raises(Opened, match="cuda:0"):
        runner.evaluate_existing(run_dir, progress=False)


def test_node_0_opens_its_gpus_before_the_method_starts(opened, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_spec(run_dir, "cuda")
    with pytest.raises(Opened, match="cuda"):
        runner.train(run_dir, resume=False, progress=False)
