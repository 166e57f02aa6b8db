"""Host memory of the evaluation worker's ``load``, measured in a fresh process (VmHWM after a reset).

The worker used to build the model in float32 on the host, copy the payload into ``bytes`` and let
safetensors copy it again: three times the weights on top of the payload, for every lane of a node (7.2 GB
of model alone per lane for the 1.8B preset). Now the model is built on its device and the weights are
views of the payload: on the CPU the host holds the model once; on another device (the meta device stands
in for a GPU here) almost nothing beyond the payload. Memory, not time: the figures do not depend on load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

CONFIG = dict(vocab_size=4096, seq_len=64, n_layer=8, n_head=8, d_model=1024, mlp="relu2")  # 416 MiB float32


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(device: str) -> dict:
    import torch
    from safetensors.torch import save

    from harness.confined.eval_worker import ModelServer
    from q0_reference.model import BUILDER, build_gpt

    torch.manual_seed(0)
    payload = memoryview(bytearray(save({k: v.contiguous() for k, v in build_gpt(CONFIG).state_dict().items()})))
    server = ModelServer(None, [os.getcwd()], {})
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the meta device's "copying into a meta parameter is a no-op"
        server.load({"builder": BUILDER, "config": CONFIG, "device": device}, payload)
    loaded = server.model.state_dict()
    return {"weights": payload.nbytes, "peak_over_base": _status("VmHWM") - base,
            "device": str(next(iter(loaded.values())).device)}


def _measured(device: str) -> dict:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "tests.eval_worker.test_load_memory", device], cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_loading_on_the_host_holds_the_model_once_beside_the_payload():
    got = _measured("cpu")
    assert got["device"] == "cpu"
    assert got["peak_over_base"] < 1.3 * got["weights"]  # was 3.0x: bytes copy, safetensors copy, model


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_loading_for_another_device_builds_nothing_on_the_host():
    got = _measured("meta")
    assert got["device"] == "meta"
    assert got["peak_over_base"] < 0.4 * got["weights"]  # was 3.0x: the model was built on the host first


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1])))
