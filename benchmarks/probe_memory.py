"""One q0 training step of a preset at microbatches 1 to 4: measured peak memory and speed beside the
estimate that `slowrun plan` uses (q0_reference.memory).

The preset's model is built once on the device (on the meta device first, then initialised there), with
its optimizer (Muon and AdamW) and a bf16 teacher, since a distilled cycle is q0's memory peak. For each
microbatch m the probe resets the peak counter, runs one warm-up step and one timed step (one
microbatch, distilled, bf16 autocast, then the optimizer update) and reports:

- the peak memory measured and the estimate for m (which also says whether m should fit);
- forward+backward tokens/s, and the optimizer update's time;
- the step time projected for the preset's global batch on ``--gpus`` GPUs in one group, with
  accumulation = batch / (m x gpus): accumulation x (forward+backward) + update.

A microbatch that runs out of memory is reported as such; if the estimate said it fits, the probe fails
(exit 1): the estimate is wrong and `slowrun plan` would accept a microbatch that cannot train. Eager by
default, as the estimate is; ``--compile`` measures the compiled step instead (one compilation per m).

    python -m benchmarks.probe_memory --preset fineweb --micro 1 2 3 4 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from benchmarks.hardware import device_name, peak_memory_gib, reset_peak_memory, synchronize
from q0_reference.distill import DistillSpec, Teacher
from q0_reference.memory import GIB, estimate_memory
from q0_reference.model import GPTConfig, build_on_device
from q0_reference.optim import build_optimizer
from q0_reference.presets import get_preset
from q0_reference.runtime import Runtime
from q0_reference.trainer import accumulated_step


def probe(config: GPTConfig, optimizer_spec, *, micro_batches=(1, 2, 3, 4), device: str = "cuda",
          compile: str = "off", global_batch: int = 256, gpus: int = 8, distill: DistillSpec = DistillSpec()) -> list[dict]:
    runtime = Runtime.resolve(device, "bf16", compile)
    runtime.configure_backends()
    torch.manual_seed(0)
    built = time.perf_counter()
    model = build_on_device(config, device)
    synchronize(device)
    build_s = time.perf_counter() - built
    optimizer = build_optimizer(model, optimizer_spec)
    teacher = Teacher(model, dtype=torch.bfloat16, autocast=runtime.autocast, compile_fn=runtime.compiled)
    forward = runtime.compiled(model)
    rows = []
    for m in micro_batches:
        estimate = estimate_memory(config, optimizer=optimizer_spec.kind, micro_batch=m, bf16=True, teacher=True)
        row = {"micro_batch": m, "estimate_gib": estimate.total / GIB, "build_s": build_s}
        g = torch.Generator().manual_seed(m)
        batch = [(runtime.to_device(torch.randint(0, config.vocab_size, (m, config.seq_len), generator=g)),
                  runtime.to_device(torch.randint(0, config.vocab_size, (m, config.seq_len), generator=g)))]
        try:
            reset_peak_memory(device)
            accumulated_step(forward, optimizer, batch, teacher, alpha=distill.alpha, temperature=distill.temperature,
                             autocast=runtime.autocast)  # warm-up (and compilation)
            synchronize(device)
            started = time.perf_counter()
            _forward_backward(forward, optimizer, batch, teacher, runtime, distill)
            synchronize(device)
            middle = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            synchronize(device)
            ended = time.perf_counter()
        except torch.cuda.OutOfMemoryError:
            row.update(out_of_memory=True, measured_gib=None)
            optimizer.zero_grad(set_to_none=True)
            if runtime.is_cuda:
                torch.cuda.empty_cache()
            rows.append(row)
            continue
        fwd_bwd, update = middle - started, ended - middle
        accumulation = max(1, global_batch // (m * gpus))
        row.update(out_of_memory=False, measured_gib=peak_memory_gib(device), fwd_bwd_s=fwd_bwd, update_s=update,
                   tokens_per_s=m * config.seq_len / fwd_bwd,
                   projected_step_s=accumulation * fwd_bwd + update, accumulation=accumulation)
        rows.append(row)
    return rows


def _forward_backward(forward, optimizer, batch, teacher, runtime, distill):
    """accumulated_step's forward and backward without its update, to time the two apart."""
    from q0_reference.distill import distillation_loss

    optimizer.zero_grad(set_to_none=True)
    (x, y), = batch
    with runtime.autocast():
        logits = forward(x)
        guide = teacher(x)
    distillation_loss(logits, guide, y, alpha=distill.alpha, temperature=distill.temperature).backward()


def verdicts(rows: list[dict], gpu_bytes: int | None) -> list[str]:
    """Problems to fail on: a microbatch the estimate says fits that ran out of memory, or measured more."""
    problems = []
    for row in rows:
        fits = gpu_bytes is None or row["estimate_gib"] * GIB <= gpu_bytes
        if row["out_of_memory"] and fits:
            problems.append(f"microbatch {row['micro_batch']} ran out of memory although the estimate "
                            f"({row['estimate_gib']:.1f} GiB) says it fits")
        elif row.get("measured_gib") and row["measured_gib"] > row["estimate_gib"]:
            problems.append(f"microbatch {row['micro_batch']} peaked at {row['measured_gib']:.1f} GiB, above the "
                            f"estimate of {row['estimate_gib']:.1f} GiB")
    return problems


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'micro':>5}  {'measured GiB':>12}  {'estimate GiB':>12}  {'fwd+bwd tok/s':>13}  {'update s':>8}  "
             f"{'step s (projected)':>18}"]
    for r in rows:
        if r["out_of_memory"]:
            lines.append(f"{r['micro_batch']:>5}  {'out of memory':>12}  {r['estimate_gib']:>12.1f}")
            continue
        measured = f"{r['measured_gib']:.1f}" if r["measured_gib"] is not None else "n/a (cpu)"
        lines.append(f"{r['micro_batch']:>5}  {measured:>12}  {r['estimate_gib']:>12.1f}  {r['tokens_per_s']:>13,.0f}  "
                     f"{r['update_s']:>8.3f}  {r['projected_step_s']:>11.2f} (x{r['accumulation']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.probe_memory", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="fineweb")
    p.add_argument("--micro", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile", default="off")
    p.add_argument("--gpus", type=int, default=8, help="GPUs in the group the projection assumes")
    p.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide version of the preset (CPU smoke runs)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    preset = get_preset(args.preset)
    config = preset.model
    if args.tiny:
        config = GPTConfig(**{**config.to_dict(), "n_layer": 2, "d_model": 64, "n_head": 2, "seq_len": 64,
                              "vocab_size": 512})
    rows = probe(config, preset.optimizer, micro_batches=args.micro, device=args.device, compile=args.compile,
                 global_batch=preset.batch_size, gpus=args.gpus, distill=preset.distill)
    gpu_bytes = torch.cuda.get_device_properties(args.device).total_memory if args.device.startswith("cuda") else None
    print(f"one q0 step of preset {preset.name}{' (tiny)' if args.tiny else ''} on {device_name(args.device)}: "
          f"{sum(p.numel() for p in build_on_device(config, 'meta').parameters()):,} parameters, "
          f"model built on the device in {rows[0]['build_s']:.1f} s")
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    problems = verdicts(rows, gpu_bytes)
    for problem in problems:
        print(f"PROBE FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
