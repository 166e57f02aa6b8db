"""The evaluation worker keeps freed memory for its next forward pass instead of faulting it in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator tuning is glibc's")

# A forward pass of the q0 reference GPT, as a worker runs it, in a fresh process; prints the minor page
# faults of the median pass after warm-up (each is a page of memory the kernel had to hand out and zero again).
SCRIPT = """
import resource, sys, torch
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    from harness.confined.allocator import keep_freed_memory
    assert keep_freed_memory()
from q0_reference.model import build_gpt
from q0_reference.presets import get_preset
model = build_gpt(get_preset("cpu_small").model_config(vocab_size=512, seq_len=128).to_dict()).eval()
x = torch.randint(0, 512, (16, 128))
with torch.inference_mode():
    for _ in range(3):
        model(x)
    faults = []
    for _ in range(11):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(sorted(faults)[5])  # the median pass: a one-off burst (a lazily mapped library page) is not the habit
"""


def faults_per_forward(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def test_forward_passes_reuse_freed_memory_once_the_thresholds_are_raised():
    # With glibc's defaults this machine measured 2,300 to 7,600 page faults per pass (9 to 30 MB zeroed),
    # and under 50 with the thresholds raised; a loaded machine once gave 192. The two are compared with
    # each other, measured side by side, not with a fixed count that the machine's load can move.
    kept, default = faults_per_forward("keep"), faults_per_forward("default")
    assert kept * 10 < default, (f"{kept} page faults per forward pass with the thresholds raised, "
                                 f"{default} with glibc's defaults")
