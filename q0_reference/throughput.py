"""Training speed as the recipes log it, and the FLOP count behind model FLOPs utilisation (MFU).

FLOPs per trained token follow the usual convention (PaLM appendix B, nanoGPT): 6 N for the forward and
backward matrix products over the N weights that multiply activations (every matrix and the head; the
input embedding is a lookup), plus 12 L d T for attention over a context of T (counted in full, not
halved for the causal mask). A teacher's forward costs a third of that again, which q0's distilled
cycles pay on top; MFU here counts the student's work only, so it understates what a distilling step
keeps busy.
"""

from __future__ import annotations

import time

import torch

from q0_reference.model import GPTConfig


def matmul_parameters(config: GPTConfig) -> int:
    d, h = config.d_model, config.mlp_hidden
    mlp = (3 if config.mlp == "swiglu" else 2) * d * h
    return config.n_layer * (4 * d * d + mlp) + config.padded_vocab_size * d


def training_flops_per_token(config: GPTConfig, context: int | None = None) -> float:
    t = config.seq_len if context is None else context
    return 6.0 * matmul_parameters(config) + 12.0 * config.n_layer * config.d_model * t


class Throughput:
    """Tokens per second between log points (the losses read at a log point synchronise the device, so
    wall-clock time there is the device's time too), and the peak device memory so far on CUDA."""

    def __init__(self, device: str, clock=time.perf_counter):
        self.device = torch.device(device)
        self._clock = clock
        self._since = clock()
        self._tokens = 0

    def add(self, tokens: int) -> None:
        self._tokens += tokens

    def report(self) -> dict[str, float]:
        now = self._clock()
        elapsed, tokens = now - self._since, self._tokens
        self._since, self._tokens = now, 0
        out = {}
        if elapsed > 0 and tokens:
            out["tokens_per_s"] = tokens / elapsed
        if self.device.type == "cuda":
            out["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / (1 << 30)
        return out
