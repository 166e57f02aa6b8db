"""A preset's snapshot evaluated from its exported graph on one device: export, build, bound, then
scoring speed against the model's own forward, and the time one fineweb snapshot would take.

The model is the preset's, with random weights (no cost changes), built on the device. It is exported at
the evaluation's shape [batch, seq_len] as a method's process does at `ctx.save_snapshot`, then built
by the harness (program check, fake-tensor bounds) and bound to the weights. Both sides score the same
random windows with `token_logprobs` (logits normalised on the device, log-probabilities to the host)
under the evaluation's precision (bf16 autocast on CUDA); the graph's log-probabilities must equal the
eager model's within bf16 noise. The per-snapshot estimate scales the graph's measured seconds per
window to fineweb's validation split (10M tokens) and fitness carve (132,000 tokens).

    python -m benchmarks.graph_eval --preset fineweb --device cuda --windows 64 --batch 16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np
import torch

from benchmarks.hardware import device_name, peak_memory_gib, reset_peak_memory, synchronize
from harness.confined.graph_export import GraphExporter
from harness.eval.graph_load import build_graph
from harness.eval.logprobs import token_logprobs
from q0_reference.model import build_on_device
from q0_reference.presets import get_preset

FINEWEB_VAL_TOKENS = 10_000_000
FINEWEB_FITNESS_TOKENS = 132_000


def timed(fn, device: str) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fineweb")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer d=64 model at 128 tokens (a CPU dry run)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    config = get_preset(args.preset).model
    if args.tiny:
        config = dataclasses.replace(config, n_layer=2, d_model=64, n_head=2, seq_len=128)
    autocast = "bfloat16" if args.device.startswith("cuda") else None
    torch.manual_seed(0)
    model = build_on_device(config, args.device).eval()
    seconds, (program, constants) = timed(
        lambda: GraphExporter().export(model, model.build_spec(), args.batch, config.seq_len), args.device)
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    build_s, template = timed(lambda: build_graph(program, weights, constants, args.device, autocast), args.device)
    graph = template.bind(weights, constants)
    windows = np.random.default_rng(0).integers(0, config.vocab_size, size=(args.windows, config.seq_len + 1))

    def eager():
        with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=autocast is not None):
            return token_logprobs(model, windows, args.batch, args.device)

    timed(eager, args.device)  # warm-up: kernels chosen, allocator filled
    timed(lambda: token_logprobs(graph, windows, args.batch, args.device), args.device)
    reset_peak_memory(args.device)
    eager_s, reference = timed(eager, args.device)
    graph_s, scored = timed(lambda: token_logprobs(graph, windows, args.batch, args.device), args.device)
    difference = float(np.abs(reference - scored).max())
    per_window = graph_s / args.windows
    windows_per_snapshot = (FINEWEB_VAL_TOKENS + FINEWEB_FITNESS_TOKENS) / config.seq_len
    row = {"device": device_name(args.device), "preset": args.preset, "tiny": args.tiny, "batch": args.batch,
           "parameters": sum(p.numel() for p in model.parameters()), "export_s": seconds, "build_s": build_s,
           "program_bytes": len(program), "operators": sum(template.summary.ops.values()),
           "flops_per_batch": template.bounds.flops, "eager_s": eager_s, "graph_s": graph_s,
           "graph_over_eager": graph_s / eager_s, "max_abs_logp_difference": difference,
           "peak_memory_gib": peak_memory_gib(args.device),
           "fineweb_snapshot_minutes": per_window * windows_per_snapshot / 60 + build_s / 60}
    print(json.dumps(row, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(row, handle, indent=2)
    tolerance = 0.05 if autocast else 1e-4
    if difference > tolerance:
        print(f"graph and eager log-probabilities differ by {difference:.3g} (> {tolerance})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
