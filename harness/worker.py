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
from harness.distributed import RankInfo, StoreBudget, gather_objects, init_process_group, rank_from_env, shutdown
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


def _restore_for_resume(paths: RunPaths, info: RankInfo) -> tuple[MeterState | None, dict | None]:
    """Roll the run's files back to its last checkpoint (or to nothing) and return what to resume from.

    In a distributed run every rank rolls back its own metrics and checkpoint; the snapshots kept are
    those any rank's checkpoint lists (each rank lists the ones it wrote or saw), and rank 0 removes the
    rest once all ranks have looked.
    """
    import torch

    kept: set[str] = set()
    metrics_lines = 0
    payload = None
    if paths.checkpoint.exists():
        payload = torch.load(paths.checkpoint, weights_only=False)
        kept = set(payload["snapshots"])
        metrics_lines = payload["metrics_lines"]
    if info.is_distributed:
        kept = set().union(*gather_objects(sorted(kept)))
    if info.rank == 0:
        for snap in list_snapshots(paths.snapshots):
            if snap.tag not in kept:  # taken after the checkpoint: the resumed run takes it again
                shutil.rmtree(snap.folder)
        for leftover in paths.snapshots.glob(".*.tmp-*") if paths.snapshots.exists() else []:
            shutil.rmtree(leftover, ignore_errors=True)
    if info.is_distributed:
        gather_objects(None)  # nobody trains before rank 0 has rolled the snapshots back
    if paths.metrics.exists():
        lines = paths.metrics.read_text(encoding="utf-8").splitlines(keepends=True)[:metrics_lines]
        paths.metrics.write_text("".join(lines), encoding="utf-8")
    if payload is None:
        return None, None
    return MeterState.from_dict(payload["meter"]), payload


def run_worker(run_dir: Path, resume: bool = False, progress: bool = True) -> dict:
    spec = json.loads((run_dir / WORKER_SPEC).read_text(encoding="utf-8"))
    info = rank_from_env()
    device = spec["device"]
    if info.is_distributed:
        device = init_process_group(info, device)
    paths = RunPaths(run_dir, info.rank)
    track = Track.from_dict(spec["track"])
    store = TokenStore.open(paths.train_data, "train")
    meter_state, payload = _restore_for_resume(paths, info) if resume else (None, None)

    import torch

    apply_thread_setting()
    seed = int(spec["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)
    shared = None
    if info.is_distributed:
        shared = StoreBudget(initial_local=sum(meter_state.targets.values()) if meter_state else 0)
    ctx = RunContext(track=track, budget=spec["budget"], hparams=spec["hparams"], seed=seed, device=device,
                     paths=paths, train_store=store, fitness_docs=spec["fitness_docs"], meter_state=meter_state,
                     resume=payload, progress=progress, rank_info=info, shared_budget=shared)
    if payload is not None and payload.get("ensemble") is not None:
        ctx._ensemble = payload["ensemble"]
    status, error = "ok", None
    try:
        try:
            entry = import_entry(Path(spec["method_dir"]), spec["entry"])
        except Exception as exc:
            raise ContractError(f"[method].entry {spec['entry']!r} cannot be imported from {spec['method_dir']}: "
                                f"{type(exc).__name__}: {exc} (slowrun check DIR lists every problem)") from exc
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
    ranks = gather_objects({"rank": info.rank, "status": status, "error": error,
                            "meter": ctx.meter_state().to_dict(), "ensemble": ctx.ensemble,
                            "train_s": ctx.train_seconds})
    status, error = _job_status(ranks)
    meter = _merge_meters([MeterState.from_dict(r["meter"]) for r in ranks])
    ensemble = next((r["ensemble"] for r in ranks if r["ensemble"] is not None), None)
    train_tokens = sum(meter.targets.values())
    result = {
        "status": status,
        "error": error,
        "meter": meter.to_dict(),
        "epochs": train_tokens / ctx.epoch_tokens,
        "epoch_tokens": ctx.epoch_tokens,
        "train_tokens": train_tokens,
        "ensemble": ensemble,
        "snapshots": [s.to_summary() for s in list_snapshots(paths.snapshots)],
        "train_s": max(r["train_s"] for r in ranks) + float(spec.get("previous_train_s", 0.0)),
        "resumed": bool(resume),
        "world_size": info.world_size,
    }
    if info.rank == 0:
        _write_json_atomic(run_dir / TRAIN_RESULT, result)
    if error is not None and info.rank == 0:
        print(f"method ended with status {status}: {error['type']}: {error['message']}", file=sys.stderr)
    if info.is_distributed:
        shutdown()
    return result


_SEVERITY = ("ok", "budget-exceeded", "invalid", "diverged", "failed")


def _job_status(ranks: list[dict]) -> tuple[str, dict | None]:
    """The job ends as its worst-ending rank (a crash on any rank is the run's crash), with that error."""
    worst = max(ranks, key=lambda r: (_SEVERITY.index(r["status"]), -r["rank"]))
    error = worst["error"]
    if error is not None and len(ranks) > 1:
        error = {**error, "message": f"rank {worst['rank']}: {error['message']}"}
    return worst["status"], error


def _merge_meters(states: list[MeterState]) -> MeterState:
    """One meter for the job: ranks meter different streams (or shards), so their counts add up."""
    merged = MeterState()
    for state in states:
        for key, value in state.windows.items():
            merged.windows[key] = merged.windows.get(key, 0) + value
        for key, value in state.targets.items():
            merged.targets[key] = merged.targets.get(key, 0) + value
        merged.fitness_tokens += state.fitness_tokens
    return merged


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m harness.worker RUN_DIR [--resume] [--no-progress]", file=sys.stderr)
        return 2
    run_worker(Path(argv[0]), resume="--resume" in argv, progress="--no-progress" not in argv)
    return 0


if __name__ == "__main__":
    from harness.fast_exit import exit_now

    exit_now(main())
