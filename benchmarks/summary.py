"""The GPU check's table: each harness run's tokens/s, model FLOPs utilisation, peak memory and validation
loss, and its speed as a fraction of the bare loop of the same model and batch measured in the same check.

A run's tokens/s is the median over its log points (which the recipes stamp with the tokens per second
since the previous one), leaving out the first point of each stream, which includes compilation. It
fails (exit 1) when a run did not end "ok", has no evaluated loss, or logged no speed: the check must
never pass on a run that did not train and evaluate.

    python -m benchmarks.summary --bare bare.json RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from benchmarks.hardware import PEAK_ENV
from q0_reference.model import GPTConfig
from q0_reference.throughput import training_flops_per_token


class CheckFailed(Exception):
    pass


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise CheckFailed(f"{run_dir}: no metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_stats(run_dir: str | Path, peak_flops: float | None = None) -> dict:
    run_dir = Path(run_dir)
    record_path = run_dir / "record.json"
    if not record_path.exists():
        raise CheckFailed(f"{run_dir}: no record.json (the run did not finish)")
    record = json.loads(record_path.read_text())
    if record.get("status") != "ok":
        raise CheckFailed(f"{run_dir}: status {record.get('status')!r}, not ok: {record.get('error')}")
    val_loss = (record.get("result") or {}).get("val_loss")
    if val_loss is None or not math.isfinite(val_loss):
        raise CheckFailed(f"{run_dir}: no evaluated validation loss")
    speeds, seen, peaks = [], set(), []
    for line in _metrics(run_dir):
        if "tokens_per_s" in line:
            stream = line.get("stream")
            if stream in seen:
                speeds.append(line["tokens_per_s"])
            seen.add(stream)
        if "peak_mem_gib" in line:
            peaks.append(line["peak_mem_gib"])
    if not speeds:
        raise CheckFailed(f"{run_dir}: no tokens_per_s past the first log point; lower log_every or train longer")
    hp, track = record["hparams"], record["track"]
    config = GPTConfig(vocab_size=track["vocab_size"], seq_len=track["seq_len"], n_layer=hp["n_layer"],
                       n_head=hp["n_head"], d_model=hp["d_model"], mlp=hp["mlp"],
                       mlp_multiple=hp.get("mlp_multiple", 64))
    tokens_per_s = statistics.median(speeds)
    flops = training_flops_per_token(config)
    return {"name": record["method"]["name"], "tokens_per_s": tokens_per_s,
            "mfu": flops * tokens_per_s / peak_flops if peak_flops else None,
            "peak_mem_gib": max(peaks) if peaks else None, "val_loss": val_loss,
            "snapshots": len(record.get("snapshots", []))}


def format_table(rows: list[dict], bare: dict | None) -> str:
    def cell(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    head = f"{'run':<14} {'tokens/s':>12} {'MFU':>7} {'peak GiB':>9} {'val loss':>9} {'vs bare':>8}"
    lines = [head]
    base = bare["tokens_per_s"] if bare else None
    if bare:
        lines.append(f"{'bare loop':<14} {bare['tokens_per_s']:>12,.0f} {cell(bare.get('mfu'), '7.1%'):>7} "
                     f"{cell(bare.get('peak_mem_gib'), '9.2f'):>9} {'':>9} {'1.000':>8}")
    for r in rows:
        ratio = r["tokens_per_s"] / base if base else None
        lines.append(f"{r['name']:<14} {r['tokens_per_s']:>12,.0f} {cell(r['mfu'], '7.1%'):>7} "
                     f"{cell(r['peak_mem_gib'], '9.2f'):>9} {r['val_loss']:>9.4f} {cell(ratio, '8.3f'):>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.summary", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--bare", help="the bare loop's JSON (benchmarks.bare_loop --out)")
    args = p.parse_args(argv)
    bare = json.loads(Path(args.bare).read_text()) if args.bare else None
    peak = None
    if bare and bare.get("mfu"):
        peak = bare["flops_per_token"] * bare["tokens_per_s"] / bare["mfu"]
    try:
        rows = [run_stats(run, peak) for run in args.runs]
    except CheckFailed as exc:
        print(f"CHECK FAILED: {exc}", file=sys.stderr)
        return 1
    print(format_table(rows, bare))
    if peak is None:
        print(f"(no MFU: unknown peak FLOP rate for this device; set ${PEAK_ENV})")
    else:
        print(f"(MFU against {peak / 1e12:.0f} TFLOP/s bf16; q0's distilled steps also run a teacher forward, "
              f"a third more work than its MFU counts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
