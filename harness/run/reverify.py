"""`slowrun leaderboard add --verify`: re-evaluate a submitted run's snapshots and compare with its record.

The harness protects its numbers from the method's code, not from whoever ran `slowrun run` (they could
edit the record, or the harness). So a maintainer re-computes what the record claims on their own copy of
the track's prepared data: every snapshot is scored again in the sandboxed evaluation worker (with the
causality and statelessness probes), the final predictor is rebuilt from the record's ensemble, and each
loss must agree with the record within `TOLERANCE`.

TOLERANCE is 1e-4 nats per token, absolute. The same fp32 snapshot scored on different CPUs or thread
counts agrees to about 1e-6 here (summation order); 1e-4 leaves room for other hardware and is still a
twentieth of the smallest gain that has set a Slowrun record (about 2e-3 nats).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from harness.data.manifest import read_manifest
from harness.errors import SlowrunError

TOLERANCE = 1e-4


def reverify_run(run_dir: str | Path, record: dict, *, method_dir: str | Path | None = None,
                 data_dir: str | Path | None = None, allow_read: tuple[Path, ...] = (),
                 tolerance: float = TOLERANCE, batch_size: int = 16, device: str = "cpu",
                 progress: bool = False) -> list[str]:
    """Problems found re-evaluating RUN_DIR's snapshots against `record` (empty when all agree).

    `data_dir` is the maintainer's prepared folder of the record's track (default `prepared/<track>`); its
    data hash must be the record's. `method_dir` is needed when the snapshots' builders live in the
    method's own directory."""
    from harness.eval.evaluation import EvaluationOptions, evaluate_run
    from harness.rules.allow_read import env_allow_read
    from harness.run.runner import default_data_dir

    run_dir = Path(run_dir)
    snapshots = run_dir / "snapshots"
    if not snapshots.is_dir():
        return [f"{run_dir}: --verify needs the run folder with its snapshots/, not only the record"]
    track = record["track"]
    data_dir = Path(data_dir) if data_dir else default_data_dir(track["name"])
    try:
        manifest = read_manifest(data_dir)
    except SlowrunError as exc:
        return [f"--verify needs the track's prepared data: {exc}"]
    if manifest["data_hash"] != track["data_hash"]:
        return [f"{data_dir} holds data {manifest['data_hash'][:12]}, the record ran on {track['data_hash'][:12]}; "
                "prepare the record's track (slowrun prepare) and pass it"]
    recorded = {s["tag"]: s for s in record["snapshots"]}
    missing = sorted(set(recorded) - {p.name for p in snapshots.iterdir() if p.is_dir()})
    if missing:
        return [f"snapshots named in the record are not in {snapshots}: {', '.join(missing[:5])}"]
    ensemble = record["ensemble"]
    choice = ({m["tag"]: m["weight"] for m in ensemble["members"]} if ensemble["source"] == "method"
              else "prior" if ensemble["source"] == "prior" else None)
    with tempfile.TemporaryDirectory(prefix="slowrun-verify-") as tmp:
        copy = Path(tmp)
        for tag in recorded:  # only what the record claims; nothing of the submitter's caches
            shutil.copytree(snapshots / tag, copy / "snapshots" / tag)
        carve = record.get("fitness_carve") or {}
        options = EvaluationOptions(batch_size=batch_size, device=device, progress=progress,
                                    method_dir=Path(method_dir) if method_dir else None,
                                    builder_roots=tuple(Path(p) for p in (*allow_read, *env_allow_read())))
        evaluation = evaluate_run(copy, data_dir, int(track["seq_len"]), choice, None, options,
                                  fitness_docs=carve.get("documents"))
    return compare(record, evaluation, tolerance)


def compare(record: dict, evaluation: dict, tolerance: float = TOLERANCE) -> list[str]:
    """Every loss of the record against the re-evaluation's (a pure function: tested on its own)."""
    problems = []
    invalid = {s["tag"]: s["reason"] for s in evaluation.get("invalid_snapshots", [])}
    again = {s["tag"]: s for s in evaluation["snapshots"]}
    for snap in record["snapshots"]:
        tag = snap["tag"]
        if tag in invalid:
            problems.append(f"snapshot {tag!r} is invalid on re-evaluation: {invalid[tag]}")
        elif tag not in again:
            problems.append(f"snapshot {tag!r} was not re-evaluated")
        elif snap.get("val_loss") is None or abs(again[tag]["val_loss"] - snap["val_loss"]) > tolerance:
            problems.append(f"snapshot {tag!r}: the record says val loss {snap.get('val_loss')}, re-evaluation gives "
                            f"{again[tag]['val_loss']:.6f} (tolerance {tolerance:g})")
    result, redone = record.get("result"), evaluation.get("result")
    if result is not None:
        if redone is None:
            problems.append("the record has a result but re-evaluation produced none")
        elif abs(redone["val_loss"] - result["val_loss"]) > tolerance:
            problems.append(f"result: the record says val loss {result['val_loss']}, re-evaluation gives "
                            f"{redone['val_loss']:.6f} (tolerance {tolerance:g})")
    return problems
