"""A bare PyTorch training loop of the GPU check's model and batch: the yardstick for the harness runs.

Same GPT (q0_reference.model), same global batch and microbatch, bf16 autocast, compile, fused AdamW and
gradient clipping as the check's single_model run, but nothing else: no data server, no metering, no
schedule, no snapshots, and random token windows already on the device. The harness run's tokens/s
over this loop's is what the harness costs (and what reading real data costs).

    python -m benchmarks.bare_loop --vocab-size 50257 --seq-len 1024 --d-model 768 --n-layer 12 --n-head 12 \\
        --batch-size 32 --micro-batch-size 16 --steps 30 --device cuda --out bare.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from benchmarks.hardware import device_name, peak_flops, peak_memory_gib, reset_peak_memory, synchronize
from q0_reference.model import GPTConfig, build_on_device
from q0_reference.runtime import Runtime
from q0_reference.throughput import training_flops_per_token


def run(config: GPTConfig, *, batch_size: int, micro_batch_size: int, steps: int, warmup: int = 3,
        device: str = "cuda", autocast: str = "bf16", compile: str = "on", lr: float = 3e-3, seed: int = 0) -> dict:
    """Train ``steps`` timed steps (after ``warmup`` untimed ones) and return the measurements."""
    if batch_size % micro_batch_size:
        raise ValueError(f"batch size {batch_size} is not a multiple of the microbatch {micro_batch_size}")
    runtime = Runtime.resolve(device, autocast, compile)
    runtime.configure_backends()
    torch.manual_seed(seed)
    model = build_on_device(config, device)
    kernel = {"fused": True} if runtime.is_cuda else {"foreach": True}
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1, **kernel)
    forward = runtime.compiled(model)
    accumulation = batch_size // micro_batch_size
    g = torch.Generator(device=device).manual_seed(seed) if runtime.is_cuda else torch.Generator().manual_seed(seed)
    windows = torch.randint(0, config.vocab_size, (accumulation, micro_batch_size, config.seq_len + 1),
                            generator=g, device=device)

    def step() -> torch.Tensor:
        for micro in windows:
            with runtime.autocast():
                logits = forward(micro[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), micro[:, 1:].reshape(-1))
            (loss / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    started = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warmup_s = time.perf_counter() - started
    reset_peak_memory(device)
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    final_loss = float(loss)  # synchronises
    synchronize(device)
    elapsed = time.perf_counter() - started
    tokens_per_s = steps * batch_size * config.seq_len / elapsed
    flops = training_flops_per_token(config)
    peak = peak_flops(device)
    return {"device": device_name(device), "tokens_per_s": tokens_per_s, "step_s": elapsed / steps,
            "warmup_s": warmup_s, "peak_mem_gib": peak_memory_gib(device), "flops_per_token": flops,
            "mfu": flops * tokens_per_s / peak if peak else None, "loss": final_loss,
            "params": sum(p.numel() for p in model.parameters()), "batch_size": batch_size,
            "micro_batch_size": micro_batch_size, "autocast": autocast, "compile": compile}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bare_loop", description=__doc__.splitlines()[0])
    for name, default in (("vocab-size", 50257), ("seq-len", 1024), ("d-model", 768), ("n-layer", 12), ("n-head", 12),
                          ("batch-size", 32), ("micro-batch-size", 16), ("steps", 30), ("warmup", 3)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--mlp", default="relu2")
    p.add_argument("--device", default="cuda")
    p.add_argument("--autocast", default="bf16")
    p.add_argument("--compile", default="on")
    p.add_argument("--out", help="write the measurements here as JSON (also printed)")
    args = p.parse_args(argv)
    config = GPTConfig(vocab_size=args.vocab_size, seq_len=args.seq_len, n_layer=args.n_layer, n_head=args.n_head,
                       d_model=args.d_model, mlp=args.mlp)
    result = run(config, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size, steps=args.steps,
                 warmup=args.warmup, device=args.device, autocast=args.autocast, compile=args.compile)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
