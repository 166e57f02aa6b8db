"""Inference-budget sweep from cached log-probabilities against re-running the models for every K.

The floor is what evaluation cannot avoid: one forward pass of each of the M snapshots over the
validation windows (which is exactly what fills the caches). The cached path adds the prior fit and the
whole K sweep (K = 1, 2, 4, ..., M) as arithmetic on those caches; the target is (floor + sweep) / floor
<= 1.2. The naive path re-runs the forward passes of the K kept members for every K (1 + 2 + 4 + 8 = 15
passes for M = 8) and mixes their outputs. Fitness caches (for the prior) are computed once, outside the
timings, since both paths need them.

Run: /work/venv/bin/pytest tests/bench/test_bench_ksweep.py -m bench -s
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from harness.eval.ensemble import ensemble_nll
from harness.eval.logprobs import token_logprobs
from harness.eval.prior import default_ks, fit_prior, k_sweep

MEMBERS = 8
VOCAB = 2048
SEQ = 128
DIM = 64
LAYERS = 2
HEADS = 4
VAL_WINDOWS = 64
FIT_WINDOWS = 16
BATCH = 16
ROUNDS = 3


class Block(torch.nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class TinyGPT(torch.nn.Module):
    def __init__(self, seed: int, temperature: float):
        super().__init__()
        torch.manual_seed(seed)
        self.temperature = temperature
        self.embed = torch.nn.Embedding(VOCAB, DIM)
        self.pos = torch.nn.Parameter(torch.randn(SEQ, DIM) * 0.02)
        self.blocks = torch.nn.ModuleList(Block(DIM, HEADS) for _ in range(LAYERS))
        self.norm = torch.nn.LayerNorm(DIM)
        self.head = torch.nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, idx):
        x = self.embed(idx) + self.pos[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)) * self.temperature


def best_of(fn, rounds: int = ROUNDS):
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def test_k_sweep_from_caches_vs_rerunning_forward_passes(benchmark):
    rng = np.random.default_rng(0)
    models = [TinyGPT(seed=i, temperature=2.0 + 0.5 * i) for i in range(MEMBERS)]
    val = rng.integers(0, VOCAB, size=(VAL_WINDOWS, SEQ + 1), dtype=np.uint16)
    fit = rng.integers(0, VOCAB, size=(FIT_WINDOWS, SEQ + 1), dtype=np.uint16)
    fit_caches = np.stack([token_logprobs(m, fit, BATCH).reshape(-1) for m in models])
    ks = default_ks(MEMBERS)

    floor, val_caches = best_of(lambda: [token_logprobs(m, val, BATCH) for m in models])
    sweep_result = benchmark.pedantic(lambda: k_sweep(fit_caches, val_caches, ks), rounds=20, iterations=1)
    sweep = benchmark.stats.stats.min

    prior = fit_prior(fit_caches)
    order = sorted(range(MEMBERS), key=lambda i: (-prior.weights[i], i))

    def naive():
        losses = []
        for k in ks:
            kept = order[:k]
            fresh = [token_logprobs(models[i], val, BATCH) for i in kept]
            losses.append(ensemble_nll(fresh, prior.weights[kept]))
        return losses

    naive_time, naive_losses = best_of(naive)
    np.testing.assert_allclose([p.val_nll for p in sweep_result], naive_losses, rtol=1e-12)

    cached_ratio = (floor + sweep) / floor
    naive_ratio = naive_time / floor
    benchmark.extra_info.update(
        floor_s=floor, sweep_s=sweep, naive_s=naive_time, cached_over_floor=cached_ratio, naive_over_floor=naive_ratio
    )
    print(
        f"\nK sweep over M={MEMBERS} snapshots, {VAL_WINDOWS}x{SEQ} validation targets, vocab {VOCAB}, ks={ks}\n"
        f"  floor (M forward passes, fills caches): {floor * 1e3:9.1f} ms\n"
        f"  prior fit + K sweep from caches:        {sweep * 1e3:9.1f} ms\n"
        f"  naive (sum of K forward passes per K):  {naive_time * 1e3:9.1f} ms\n"
        f"  (floor + sweep) / floor = {cached_ratio:.3f}x   (target <= 1.2x)\n"
        f"  naive / floor           = {naive_ratio:.3f}x"
    )
    assert cached_ratio <= 1.2
