"""Run a method directory: check it, give it the training data in its own process, evaluate, record.

    run_method(RunRequest(...))  ->  RUN_DIR/record.json
    resume_run(RUN_DIR)          continue a run that was killed, from its last checkpoint
    evaluate_existing(RUN_DIR)   recompute the evaluation and the record from the snapshots

The run folder holds: `run.json` (the full spec), `worker.json` (what the method's process may know),
`train_data/` (links to the training split only), `snapshots/`, `metrics.jsonl`, `checkpoint/`,
`train_result.json` (written by the method's process), `eval/` (per-token caches) and `record.json`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.data.manifest import MANIFEST, read_manifest
from harness.distributed import LaunchSpec
from harness.errors import SlowrunError
from harness.method_spec import MethodError, MethodSpec, check_method, method_hash
from harness.provenance import environment
from harness.records import SCHEMA_VERSION, utc_timestamp, write_record_atomic
from harness.tracks import Track, get_track
from harness.worker import TRAIN_RESULT, WORKER_SPEC

RUN_SPEC = "run.json"
RECORD = "record.json"


@dataclass(frozen=True)
class RunRequest:
    method_dir: Path
    track: str = "synthetic"
    epochs: float = 4.0
    seed: int = 0
    overrides: tuple[tuple[str, str], ...] = ()
    out: Path | None = None
    data_dir: Path | None = None
    device: str = "cpu"
    progress: bool = True
    track_files: tuple[str, ...] = ()
    compute_class: str | None = None
    eval_batch_size: int = 16
    runs_root: Path = field(default=Path("runs"))
    track_spec: Track | None = None  # a track object instead of a name (calibration's larger variants)
    downstream: bool = False  # also score ARC-Easy, PIQA and SciQ with the final predictor
    downstream_data: Path | None = None  # local copies of the three tasks' data (else the Hub)
    downstream_limit: int | None = None  # documents per task (for quick looks; the record says n)
    launch: LaunchSpec = field(default_factory=LaunchSpec)  # torchrun placement (one process by default)


def default_data_dir(track: str) -> Path:
    return Path("prepared") / track


def ensure_prepared(track: Track, data_dir: Path | None, progress: bool) -> Path:
    """The prepared data folder for `track`, preparing it first when it does not exist yet."""
    from harness.data.prepare import prepare_track

    folder = Path(data_dir) if data_dir else default_data_dir(track.name)
    if not (folder / MANIFEST).exists():
        print(f"preparing track {track.name!r} into {folder}", file=sys.stderr)
        prepare_track(track, folder, progress=progress)
    manifest = read_manifest(folder)
    if manifest["track"]["name"] != track.name or manifest["seq_len"] != track.seq_len:
        raise SlowrunError(f"{folder}: holds track {manifest['track']['name']!r} (seq_len {manifest['seq_len']}), "
                           f"not {track.name!r}; pass the right --data folder")
    return folder


def _link_training_split(data_dir: Path, target: Path) -> None:
    """Give the method's process the training split only: hard links (copies across filesystems) and a
    manifest without the validation split, so the method is never told where validation lives."""
    manifest = read_manifest(data_dir)
    target.mkdir(parents=True, exist_ok=True)
    train = manifest["splits"]["train"]
    for name in (train["tokens_file"], train["docs_file"]):
        dest = target / name
        if dest.exists():
            continue
        try:
            os.link(data_dir / name, dest)
        except OSError:
            shutil.copyfile(data_dir / name, dest)
    reduced = {k: v for k, v in manifest.items() if k not in ("splits", "best_val_loss", "best_val_loss_definition")}
    reduced["splits"] = {"train": train}
    (target / MANIFEST).write_text(json.dumps(reduced, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _run_id(spec: MethodSpec, track: str, epochs: float, seed: int) -> str:
    stamp = utc_timestamp().replace(":", "").replace("-", "")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.name)
    return f"{safe}-{track}-e{epochs:g}-s{seed}-{stamp}"


def prepare_run(req: RunRequest) -> Path:
    """Check the method, resolve data and hyperparameters, and lay out a new run folder."""
    # The entry point is imported in the method's own process, which reports a failed import as an
    # `invalid` record; importing it here too would put a second torch import before training starts.
    spec, problems = check_method(req.method_dir, req.track_files, import_check=False)
    if problems:
        raise MethodError(Path(req.method_dir), problems)
    track = req.track_spec or get_track(req.track, req.track_files)
    if not spec.supports(track.name):
        raise SlowrunError(f"method {spec.name!r} does not list track {track.name!r} (it lists "
                           f"{', '.join(spec.tracks)}); add it to [method].tracks in method.toml")
    if not (req.epochs > 0):
        raise SlowrunError(f"--epochs must be positive, got {req.epochs}")
    hparams = spec.resolved_hparams(track.name, dict(req.overrides))
    data_dir = ensure_prepared(track, req.data_dir, req.progress).resolve()
    manifest = read_manifest(data_dir)
    run_id = _run_id(spec, track.name, req.epochs, req.seed)
    run_dir = Path(req.out) if req.out else Path(req.runs_root) / run_id
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SlowrunError(f"{run_dir}: already exists; choose another --out or use --resume {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    _link_training_split(data_dir, run_dir / "train_data")
    common = {"track": track.to_dict(), "budget": float(req.epochs), "seed": int(req.seed), "hparams": hparams,
              "device": req.device, "method_dir": str(spec.folder), "entry": spec.entry,
              "fitness_docs": manifest["fitness"]["documents"]}
    _write_json(run_dir / WORKER_SPEC, common)
    _write_json(run_dir / RUN_SPEC, {
        **common, "run_id": run_dir.name if req.out else run_id, "created": utc_timestamp(),
        "data_dir": str(data_dir), "data_hash": manifest["data_hash"],
        "method": {"name": spec.name, "description": spec.description, "authors": list(spec.authors),
                   "entry": spec.entry, "hash": method_hash(spec.folder)},
        "tokenizer": manifest["tokenizer"]["kind"], "vocab_size": manifest["tokenizer"]["vocab_size"],
        "val_tokens": manifest["splits"]["val"]["tokens"], "train_tokens": manifest["splits"]["train"]["tokens"],
        "compute_class": req.compute_class or ("cpu" if req.device == "cpu" else "unlimited"),
        "eval_batch_size": req.eval_batch_size,
        "launch": req.launch.to_dict(),
        "downstream": {"enabled": req.downstream,
                       "data_dir": str(Path(req.downstream_data).resolve()) if req.downstream_data else None,
                       "limit": req.downstream_limit},
    })
    return run_dir


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def launch_worker(run_dir: Path, resume: bool, progress: bool, launch: LaunchSpec | None = None) -> int:
    """Run the method in a child process (torchrun's processes when distributed); returns the exit code
    (the result file says how it ended)."""
    args = [str(run_dir)]
    if resume:
        args.append("--resume")
    if not progress:
        args.append("--no-progress")
    launch = launch or LaunchSpec()
    if launch.is_distributed:
        command = launch.torchrun_command("harness.worker", args)
    else:
        command = [sys.executable, "-m", "harness.worker", *args]
    env = dict(os.environ)
    project_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = project_root + os.pathsep + env.get("PYTHONPATH", "")
    if launch.is_distributed:
        # every rank is a full process on a shared machine: one intra-op thread each unless told otherwise
        env.setdefault("OMP_NUM_THREADS", "1")
    worker = subprocess.Popen(command, env=env)
    try:
        # Evaluation needs torch in this process; importing it while the method's process starts up
        # overlaps the two imports instead of putting one after the other.
        import harness.evaluation  # noqa: F401
        return worker.wait()
    except BaseException:
        worker.kill()
        worker.wait()
        raise


def _launch_of(spec: dict) -> LaunchSpec:
    return LaunchSpec(**spec.get("launch", {}))


def join_run(req: RunRequest, wait_s: float = 600.0) -> Path:
    """A node other than node 0 of a multi-node job: wait for node 0's run folder (on a shared file
    system), start this node's ranks, and leave evaluation and the record to node 0."""
    if req.out is None:
        raise SlowrunError("--node-rank > 0 needs --out: the run folder node 0 creates on the shared file system")
    run_dir = Path(req.out)
    deadline = time.monotonic() + wait_s
    while not (run_dir / WORKER_SPEC).exists():
        if time.monotonic() > deadline:
            raise SlowrunError(f"{run_dir}: node 0 has not created the run within {wait_s:.0f} s; start node 0 "
                               "first, with the same --out on a file system both nodes see")
        time.sleep(1.0)
    code = launch_worker(run_dir, resume=False, progress=False, launch=req.launch)
    print(f"node {req.launch.node_rank}: ranks ended with code {code}; node 0 writes {run_dir / RECORD}",
          file=sys.stderr)
    return run_dir


def run_method(req: RunRequest) -> Path:
    if req.launch.node_rank > 0:
        return join_run(req)
    run_dir = prepare_run(req)
    print(f"run folder: {run_dir}", file=sys.stderr)
    started = time.monotonic()
    code = launch_worker(run_dir, resume=False, progress=req.progress, launch=req.launch)
    finish_run(run_dir, worker_exit=code, wall_s=time.monotonic() - started, progress=req.progress)
    return run_dir


def resume_run(run_dir: Path, progress: bool = True) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / RUN_SPEC).exists():
        raise SlowrunError(f"{run_dir}: not a run folder (no {RUN_SPEC})")
    spec = json.loads((run_dir / RUN_SPEC).read_text(encoding="utf-8"))
    (run_dir / TRAIN_RESULT).unlink(missing_ok=True)
    (run_dir / RECORD).unlink(missing_ok=True)
    started = time.monotonic()
    code = launch_worker(run_dir, resume=True, progress=progress, launch=_launch_of(spec))
    finish_run(run_dir, worker_exit=code, wall_s=time.monotonic() - started, progress=progress)
    return run_dir


def evaluate_existing(run_dir: Path, progress: bool = True, downstream: bool | None = None,
                      downstream_data: Path | None = None, downstream_limit: int | None = None) -> Path:
    """Recompute the evaluation and rewrite the record from the snapshots, without re-training.

    `downstream=True` (with optional local data and a document limit) adds or refreshes the downstream
    scores; None keeps whatever the run was started with."""
    run_dir = Path(run_dir)
    if not (run_dir / TRAIN_RESULT).exists():
        raise SlowrunError(f"{run_dir}: no {TRAIN_RESULT}; the run never finished training (use --resume)")
    if downstream is not None:
        spec = json.loads((run_dir / RUN_SPEC).read_text(encoding="utf-8"))
        spec["downstream"] = {"enabled": downstream,
                              "data_dir": str(Path(downstream_data).resolve()) if downstream_data else None,
                              "limit": downstream_limit}
        _write_json(run_dir / RUN_SPEC, spec)
    finish_run(run_dir, worker_exit=0, wall_s=None, progress=progress)
    return run_dir


def score_final_predictor(run_dir: Path, spec: dict, evaluation: dict, progress: bool) -> tuple[dict | None, str | None]:
    """Downstream scores of the run's final ensemble, or (None, why not)."""
    from harness.downstream import DownstreamNotApplicable, score_snapshots, track_tokenizer
    from harness.snapshots import list_snapshots

    options = spec.get("downstream") or {}
    if not options.get("enabled") or not evaluation["ensemble"]["members"]:
        return None, None
    try:
        tokenizer, seq_len = track_tokenizer(Path(spec["data_dir"]))
    except DownstreamNotApplicable as exc:
        return None, str(exc)
    by_tag = {s.tag: s for s in list_snapshots(run_dir / "snapshots")}
    members = evaluation["ensemble"]["members"]
    scores = score_snapshots([by_tag[m["tag"]] for m in members], [m["weight"] for m in members],
                             tokenizer=tokenizer, seq_len=seq_len, device=spec["device"],
                             data_dir=options.get("data_dir"), limit=options.get("limit"), progress=progress)
    return scores, None


def finish_run(run_dir: Path, worker_exit: int, wall_s: float | None, progress: bool) -> dict:
    spec = json.loads((run_dir / RUN_SPEC).read_text(encoding="utf-8"))
    result_path = run_dir / TRAIN_RESULT
    if result_path.exists():
        train = json.loads(result_path.read_text(encoding="utf-8"))
    else:
        train = {"status": "failed", "error": {
            "type": "WorkerDied", "message": f"the method's process exited with code {worker_exit} before "
            "reporting (killed, out of memory, or a crash in native code); resume with slowrun run --resume",
            "traceback": ""}, "meter": {"targets": {}, "windows": {}, "fitness_tokens": 0}, "epochs": 0.0,
            "train_tokens": 0, "ensemble": None, "snapshots": [], "train_s": wall_s or 0.0}
    from harness.evaluation import evaluate_run

    track = Track.from_dict(spec["track"])
    eval_started = time.monotonic()
    evaluation = evaluate_run(run_dir, Path(spec["data_dir"]), track.seq_len, train.get("ensemble"),
                              track.reference_curve, batch_size=spec.get("eval_batch_size", 16),
                              device=spec["device"], progress=progress)
    downstream, downstream_note = score_final_predictor(run_dir, spec, evaluation, progress)
    eval_s = time.monotonic() - eval_started
    record = build_record(spec, train, evaluation, eval_s, wall_s)
    record["downstream"] = downstream
    if downstream:
        from harness.downstream import downstream_average

        record["downstream_average"] = downstream_average(downstream)
        efficiency = _downstream_efficiency(record, track.reference_curve)
        if efficiency:
            record["downstream_efficiency"] = efficiency
    if downstream_note:
        record["downstream_note"] = downstream_note
    write_record_atomic(run_dir / RECORD, record)
    _print_summary(run_dir, record)
    return record


def _downstream_efficiency(record: dict, reference_curve: str | None) -> dict | None:
    """Data efficiency of each downstream score whose metric has a reference curve on this track."""
    from harness.efficiency import downstream_efficiency, downstream_metric_values, load_downstream_curves

    curves = load_downstream_curves(reference_curve) if reference_curve else None
    if curves is None:
        return None
    values = downstream_metric_values(record["downstream"], record.get("downstream_average"))
    return downstream_efficiency(values, curves) or None


def build_record(spec: dict, train: dict, evaluation: dict, eval_s: float, wall_s: float | None) -> dict:
    meter = train["meter"]
    status = train["status"]
    if status == "ok" and evaluation["result"] is None:
        status, train["error"] = "invalid", {"type": "NoSnapshots", "message": "the method saved no snapshot, so "
                                             "there is nothing to evaluate", "traceback": ""}
    train_s = float(train.get("train_s", 0.0))
    other_s = max(0.0, (wall_s or 0.0) - train_s) if wall_s else 0.0
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": spec["run_id"],
        "created": utc_timestamp(),
        "status": status,
        "error": train.get("error"),
        "method": spec["method"],
        "track": {"name": spec["track"]["name"], "data_hash": spec["data_hash"],
                  "train_tokens": spec["train_tokens"], "val_tokens": spec["val_tokens"],
                  "seq_len": spec["track"]["seq_len"], "vocab_size": spec["vocab_size"],
                  "tokenizer": spec["tokenizer"]},
        "budget_epochs": spec["budget"],
        "seed": spec["seed"],
        "hparams": spec["hparams"],
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
        "timings": {"train_s": train_s, "eval_s": eval_s, "other_s": other_s},
        "resumed": bool(train.get("resumed", False)),  # continued from a checkpoint after an interruption
        "compute": {"class": spec["compute_class"], "device": spec["device"],
                    "world_size": int(train.get("world_size", _launch_of(spec).world_size))},
        "environment": environment(spec["device"]),
    }


def _print_summary(run_dir: Path, record: dict) -> None:
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
    lines.append(f"record: {run_dir / RECORD}")
    print("\n".join(lines), file=sys.stderr)
