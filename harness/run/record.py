"""A run's record, assembled in one place from what the run folder and the evaluation hold.

The runner trains and evaluates; this module turns the run spec (what the run is), the data server's
account of training (``train_result.json``), the evaluation's numbers, the downstream scores, the
scheduler's job and the tracking links into the record (schema: harness/formats/records.py,
docs/records.md), decides the compute section and why a run is unranked, and prints its summary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness.common.provenance import environment
from harness.formats.records import SCHEMA_VERSION, utc_timestamp
from harness.formats.run_spec import RunSpec, as_json
from harness.run.tracking import TrackingOptions, record_link


def assemble_record(spec: RunSpec, run_dir: Path, train: dict, evaluation: dict, eval_s: float,
                    wall_s: float | None, downstream: dict | None, downstream_note: str | None) -> dict:
    """The whole record: the core fields, then what only some runs have (downstream scores and their data
    efficiency, the scheduler's job, the tracking links)."""
    record = build_record(spec, train, evaluation, eval_s, wall_s)
    record["downstream"] = downstream
    if downstream:
        from harness.eval.downstream import downstream_average

        record["downstream_average"] = downstream_average(downstream)
        efficiency = _downstream_efficiency(record, spec.track_spec.reference_curve)
        if efficiency:
            record["downstream_efficiency"] = efficiency
    if downstream_note:
        record["downstream_note"] = downstream_note
    scheduler = _scheduler_section(run_dir)
    if scheduler is not None:
        record["scheduler"] = scheduler
    link = record_link(TrackingOptions.from_json(spec.tracking), run_dir, spec.run_id)
    if link is not None:
        record["tracking"] = link
    return record


def _scheduler_section(run_dir: Path) -> dict | None:
    """The record's account of a scheduler's job: its id, how often it started, how often a start resumed
    an interrupted run (pre-emptions, requeues, node failures). None for a run started by hand."""
    path = run_dir / "slurm" / "job.json"
    if not path.exists():
        return None
    job = json.loads(path.read_text(encoding="utf-8"))
    starts = job.get("starts", [])
    warned = [s for s in starts if s.get("warned")]
    return {"kind": "slurm", "job_id": job.get("job_id"), "starts": len(starts),
            "preemptions": sum(1 for s in starts if s.get("resumed")),
            # of the starts the scheduler warned, those whose every rank checkpointed on the warning (the
            # others resumed from an earlier checkpoint and trained its work again)
            "warnings": len(warned),
            "checkpointed_on_warning": sum(1 for s in warned if (s.get("checkpoint_on_warning") or {}).get("settled"))}


EMPTY_EVALUATION = {"snapshots": [], "ensemble": {"members": [], "source": "last"}, "result": None,
                     "k_sweep": [], "curve": [], "prior": None}


def _downstream_efficiency(record: dict, reference_curve: str | None) -> dict | None:
    """Data efficiency of each downstream score whose metric has a reference curve on this track."""
    from harness.eval.efficiency import downstream_efficiency, downstream_metric_values, load_downstream_curves

    curves = load_downstream_curves(reference_curve) if reference_curve else None
    if curves is None:
        return None
    values = downstream_metric_values(record["downstream"], record.get("downstream_average"))
    return downstream_efficiency(values, curves) or None


def build_record(spec: RunSpec, train: dict, evaluation: dict, eval_s: float, wall_s: float | None) -> dict:
    meter = train["meter"]
    status = train["status"]
    invalid = evaluation.get("invalid_snapshots") or []
    if status == "ok" and evaluation["result"] is None and invalid:
        reasons = "; ".join(f"{s['tag']}: {s['reason']}" for s in invalid[:3])
        status, train["error"] = "invalid", {"type": "InvalidSnapshots", "message": f"no valid snapshot is left to "
                                             f"evaluate ({len(invalid)} invalid): {reasons}", "traceback": ""}
    elif status == "ok" and evaluation["result"] is None:
        status, train["error"] = "invalid", {"type": "NoSnapshots", "message": "the method saved no snapshot, so "
                                             "there is nothing to evaluate", "traceback": ""}
    train_s = float(train.get("train_s", 0.0))
    warmup_s = float(train.get("warmup_s", 0.0))
    # `wall_s` is the time up to evaluation; the run's wall time includes evaluation
    other_s = max(0.0, wall_s - train_s) if wall_s else 0.0
    wall_total = wall_s + eval_s if wall_s is not None else None
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": spec.run_id,
        "created": utc_timestamp(),
        "status": status,
        "error": train.get("error"),
        "method": as_json(spec.method),
        "track": {"name": spec.track["name"], "data_hash": spec.data_hash,
                  "train_tokens": spec.train_tokens, "val_tokens": spec.val_tokens,
                  "seq_len": spec.track["seq_len"], "vocab_size": spec.vocab_size,
                  "tokenizer": spec.tokenizer},
        "budget_epochs": spec.budget,
        "seed": spec.seed,
        "hparams": as_json(spec.hparams),
        "metered": {"epochs": float(train["epochs"]), "train_tokens": int(train["train_tokens"]),
                    "per_stream": dict(meter.get("targets", {})), "fitness_tokens": int(meter.get("fitness_tokens", 0)),
                    "epoch_tokens": train.get("epoch_tokens")},
        "snapshots": evaluation["snapshots"],
        "ensemble": evaluation["ensemble"],
        "result": evaluation["result"],
        "k_sweep": evaluation["k_sweep"],
        "curve": evaluation["curve"],
        "prior": evaluation["prior"],
        "downstream": None,
        "timings": {"train_s": train_s, "eval_s": eval_s, "other_s": other_s, "warmup_s": warmup_s,
                    "wall_s": wall_total},
        "resumed": bool(train.get("resumed", False)),  # continued from a checkpoint after an interruption
        "sandbox": train.get("sandbox") or {"kind": "none", "reason": "not recorded"},
        "incidents": list(train.get("incidents") or []),  # what the data server refused or stopped
        "invalid_snapshots": invalid,
        "evaluation": evaluation.get("evaluation"),
        "compute": _compute_section(spec, train, train_s),
        "unranked_reasons": _unranked(spec, train, train_s),
        "fitness_carve": as_json(spec.fitness_carve),
        "environment": environment(spec.device),
    }


def _hardware(spec: RunSpec):
    from harness.rules.compute import Hardware

    raw = spec.hardware
    if raw is None:  # a run folder from before compute classes: the device is all it says
        return Hardware(None, 0, spec.launch_spec.nnodes)
    return Hardware(raw["gpu_model"], int(raw["gpus_per_node"]), int(raw["nodes"]))


def _compute_section(spec: RunSpec, train: dict, train_s: float) -> dict:
    return {"class": spec.compute_class, "device": spec.device,
            "world_size": int(train.get("world_size", spec.launch_spec.world_size)),
            "hardware": _hardware(spec).to_dict(train_s), "time_limit_s": spec.time_limit_s,
            "over_cap_s": train.get("over_cap_s")}


def _unranked(spec: RunSpec, train: dict, train_s: float) -> list[str]:
    from harness.rules.compute import COMPUTE_CLASSES, unranked_reasons

    klass = COMPUTE_CLASSES.get(spec.compute_class)
    if klass is None:  # an old free-form label
        return [f"compute class {spec.compute_class!r} is not one of {', '.join(COMPUTE_CLASSES)}"]
    return unranked_reasons(klass, _hardware(spec), spec.time_limit_s, train_s, train.get("over_cap_s"))


def print_summary(record_path: Path, record: dict) -> None:
    lines = [f"status {record['status']}, {record['metered']['epochs']:.3f} epochs metered, "
             f"{len(record['snapshots'])} snapshot(s)"]
    if record["error"]:
        lines.append(f"error: {record['error']['type']}: {record['error']['message']}")
    if record["result"]:
        r = record["result"]
        eff = r["data_efficiency"]
        eff_text = f"{eff['multiplier']:.2f}x" if eff["multiplier"] is not None else (eff["bound"] or eff["flag"])
        bpb = f", {r['val_bpb']:.4f} bits/byte" if r["val_bpb"] is not None else ""
        lines.append(f"val loss {r['val_loss']:.4f} nats/token{bpb}, ensemble of {r['ensemble_size']}, "
                     f"data efficiency {eff_text}")
    lines.append(f"record: {record_path}")
    print("\n".join(lines), file=sys.stderr)
