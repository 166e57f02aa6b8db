"""What a benchmark needs to know about the device: its bf16 peak FLOP rate, and its memory counters.

The peak is the dense bf16 tensor-core rate of the GPU's data sheet (no sparsity), looked up by name;
``$SLOWRUN_PEAK_TFLOPS`` overrides it (and gives a CPU one). Without a peak, MFU is not reported.
"""

from __future__ import annotations

import os

import torch

PEAK_ENV = "SLOWRUN_PEAK_TFLOPS"
# (name fragment, dense bf16 TFLOP/s); the first fragment found in the device name wins
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0), ("A6000", 155.0),
    ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("V100", 125.0),
)


def device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return dev.type


def peak_flops(device: str) -> float | None:
    """Peak bf16 FLOP/s of ``device`` (None when unknown: then no MFU)."""
    if os.environ.get(PEAK_ENV):
        return float(os.environ[PEAK_ENV]) * 1e12
    if torch.device(device).type != "cuda":
        return None
    name = device_name(device)
    for fragment, tflops in PEAK_BF16_TFLOPS:
        if fragment in name:
            return tflops * 1e12
    return None


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: str) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / (1 << 30)
