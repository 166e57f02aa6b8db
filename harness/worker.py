"""The method's own process: builds the RunContext over the training data only and calls the method.

Started by the runner as `python -m harness.worker RUN_DIR [--resume]`. It reads `worker.json` (the part
of the run spec the method may know: no validation data is named in it), and always ends by writing
`train_result.json` with the status, the meter's counts and the snapshots, whatever the method did.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import traceback
from pathlib import Path

import numpy as np

from harness.contract import ContractError, Diverged, RunContext, RunPaths
from harness.data.store import TokenStore
from harness.meter import BudgetExhausted, MeterState
from harness.method_spec import import_entry
from harness.snapshots import list_snapshots
from harness.threads import apply_thread_setting
from harness.tracks import Track

WORKER_SPEC = "worker.json"
TRAIN_RESULT = "train_result.json"


def _error(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "message": str(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _restore_for_resume(paths: RunPaths) -> tuple[MeterState | None, dict | None]:
    """Roll the run's files back to its last checkpoint (or to nothing) and return what to resume from."""
    import torch

    kept: set[str] = set()
    metrics_lines = 0
    payload = None
    if paths.checkpoint.exists():
        payload = torch.load(paths.checkpoint, weights_only=False)
        kept = set(payload["snapshots"])
        metrics_lines = payload["metrics_lines"]
    for snap in list_snapshots(paths.snapshots):
        if snap.tag not in kept:  # taken after the checkpoint: the resumed run takes it again
            shutil.rmtree(snap.folder)
    for leftover in paths.snapshots.glob(".*.tmp-*") if paths.snapshots.exists() else []:
        shutil.rmtree(leftover, ignore_errors=True)
    if paths.metrics.exists():
        lines = paths.metrics.read_text(encoding="utf-8").splitlines(keepends=True)[:metrics_lines]
        paths.metrics.write_text("".join(lines), encoding="utf-8")
    if payload is None:
        return None, None
    return MeterState.from_dict(payload["meter"]), payload


def run_worker(run_dir: Path, resume: bool = False, progress: bool = True) -> dict:
    spec = json.loads((run_dir / WORKER_SPEC).read_text(encoding="utf-8"))
    paths = RunPaths(run_dir)
    track = Track.from_dict(spec["track"])
    store = TokenStore.open(paths.train_data, "train")
    meter_state, payload = _restore_for_resume(paths) if resume else (None, None)

    import torch

    apply_thread_setting()
    seed = int(spec["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)
    ctx = RunContext(track=track, budget=spec["budget"], hparams=spec["hparams"], seed=seed, device=spec["device"],
                     paths=paths, train_store=store, fitness_docs=spec["fitness_docs"], meter_state=meter_state,
                     resume=payload, progress=progress)
    if payload is not None and payload.get("ensemble") is not None:
        ctx._ensemble = payload["ensemble"]
    status, error = "ok", None
    try:
        entry = import_entry(Path(spec["method_dir"]), spec["entry"])
        entry(ctx)
    except BudgetExhausted as exc:
        status, error = "budget-exceeded", _error(exc)
    except (Diverged, FloatingPointError) as exc:
        status, error = "diverged", _error(exc)
    except ContractError as exc:
        status, error = "invalid", _error(exc)
    except Exception as exc:
        status, error = "failed", _error(exc)
    finally:
        ctx.close()
    state = ctx.meter_state()
    result = {
        "status": status,
        "error": error,
        "meter": state.to_dict(),
        "epochs": ctx.epochs,
        "epoch_tokens": ctx.epoch_tokens,
        "train_tokens": sum(state.targets.values()),
        "ensemble": ctx.ensemble,
        "snapshots": [s.to_summary() for s in list_snapshots(paths.snapshots)],
        "train_s": ctx.train_seconds + float(spec.get("previous_train_s", 0.0)),
        "resumed": bool(resume),
    }
    _write_json_atomic(run_dir / TRAIN_RESULT, result)
    if error is not None:
        print(f"method ended with status {status}: {error['type']}: {error['message']}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m harness.worker RUN_DIR [--resume] [--no-progress]", file=sys.stderr)
        return 2
    run_worker(Path(argv[0]), resume="--resume" in argv, progress="--no-progress" not in argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
