"""`slowrun calibrate`: a small track's reference curve, measured rather than assumed.

Data efficiency needs to know what loss a standard baseline reaches with more fresh data. For the official
track that is Slowrun's published nanochat table; for a small track the harness measures it: the
single-model baseline is trained on 1x, 2x, 4x, 8x ... the track's training tokens of fresh data (the
source continued past the usual training split, behind the very same validation split and tokenizer)
and scored on that validation split. The points are written as a reference-curve data file.

Each point's x is the training tokens the baseline was served (the meter's count), and the 1x run's count
is written as the curve's ``baseline_tokens``: the multiplier's denominator, so that numerator and
denominator are in the same unit and the baseline on the track's own data scores exactly 1.00x (see
``harness.eval.efficiency``). The 1x run is therefore required.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.common.paths import PROJECT_ROOT
from harness.data.manifest import read_manifest
from harness.data.prepare import prepare_track
from harness.eval.efficiency import (CURVES_DIR, DownstreamCurves, downstream_curve_path, downstream_metric_stderrs,
                                downstream_metric_values,
                                load_downstream_curves, lower_envelope, write_downstream_curves,
                                write_reference_curve)
from harness.errors import DataError, SlowrunError
from harness.run.runner import RunRequest, ensure_prepared, run_method
from harness.rules.tracks import get_track

DEFAULT_METHOD = PROJECT_ROOT / "submissions" / "single_model"


@dataclass(frozen=True)
class CalibrationRequest:
    track: str
    factors: tuple[int, ...] = (1, 2, 4, 8)
    epochs: float = 1.0  # passes over each fresh-data set: one, as a baseline with enough data would do
    method_dir: Path = DEFAULT_METHOD
    seed: int = 0
    overrides: tuple[tuple[str, str], ...] = ()
    data_dir: Path | None = None
    work_dir: Path = Path("calibration")
    out: Path | None = None
    track_files: tuple[str, ...] = ()
    progress: bool = True
    downstream: bool = False  # also score ARC-Easy, PIQA and SciQ and write the downstream curves
    downstream_data: Path | None = None


def calibrate(req: CalibrationRequest) -> Path:
    factors = tuple(sorted(set(req.factors)))
    if not factors or factors[0] < 1:
        raise SlowrunError("--factors must be positive integers, e.g. 1,2,4,8")
    if factors[0] != 1:
        raise SlowrunError(f"--factors {','.join(map(str, factors))} lacks 1: the 1x run measures the tokens the "
                           "baseline is served from the track's own data, the multiplier's denominator; add it, "
                           f"e.g. --factors 1,{','.join(map(str, factors))}")
    track = get_track(req.track, req.track_files)
    base_dir = ensure_prepared(track, req.data_dir, req.progress)
    base = read_manifest(base_dir)
    variants = []
    for factor in factors:  # prepare every variant first: a source too small fails before any training
        variant = dataclasses.replace(track, train_tokens=factor * track.train_tokens)
        variant_dir = Path(req.work_dir) / f"{track.name}-x{factor}"
        try:
            prepare_track(variant, variant_dir, tokenizer_from=base_dir, progress=req.progress)
        except DataError as exc:
            raise SlowrunError(
                f"track {track.name!r}: its source cannot supply {factor}x the training tokens "
                f"({factor * track.train_tokens:,}) of fresh data: {exc} Use fewer --factors "
                f"(e.g. {','.join(str(f) for f in factors if f < factor) or '1'})") from None
        manifest = read_manifest(variant_dir)
        if manifest["splits"]["val"]["tokens_sha256"] != base["splits"]["val"]["tokens_sha256"]:
            raise SlowrunError(f"{variant_dir}: its validation split differs from {base_dir}'s; the curve would "
                               "not measure the same thing")
        variants.append((factor, variant, variant_dir))
    points, scored = [], []
    for factor, variant, variant_dir in variants:
        run_dir = run_method(RunRequest(
            method_dir=req.method_dir, track=track.name, track_spec=variant, epochs=req.epochs, seed=req.seed,
            overrides=req.overrides, data_dir=variant_dir, out=Path(req.work_dir) / f"run-{track.name}-x{factor}",
            progress=req.progress, downstream=req.downstream, downstream_data=req.downstream_data))
        record = json.loads((run_dir / "record.json").read_text(encoding="utf-8"))
        if record["status"] != "ok":
            raise SlowrunError(f"calibration run {run_dir} ended {record['status']}: {record['error']}")
        points.append((record["metered"]["train_tokens"], record["result"]["val_loss"]))
        if req.downstream:
            scored.append((record["metered"]["train_tokens"],
                           downstream_metric_values(record["downstream"], record.get("downstream_average")),
                           downstream_metric_stderrs(record["downstream"])))
        print(f"{factor}x fresh data: {points[-1][0]:,} tokens -> val loss {points[-1][1]:.4f}", file=sys.stderr)
    baseline_tokens = points[0][0]  # factors are sorted and start at 1: the 1x run's metered tokens
    kept = lower_envelope(points)
    if len(kept) < len(points):
        print(f"dropped {len(points) - len(kept)} point(s) where more data did not lower the loss", file=sys.stderr)
    out = Path(req.out) if req.out else CURVES_DIR / f"{track.name}.json"
    write_reference_curve(
        out, kept, track=track.name, train_tokens=track.train_tokens, baseline_tokens=baseline_tokens,
        description=(f"Validation loss of the single_model baseline trained for {req.epochs:g} epoch(s) on "
                     f"{', '.join(f'{f}x' for f in factors)} the track's training tokens of fresh data "
                     f"(seed {req.seed}); data hash of the base track {base['data_hash'][:16]}."),
        source=f"slowrun calibrate --track {track.name} --factors {','.join(map(str, factors))}",
    )
    if scored:
        names = sorted(scored[0][1])
        metrics = tuple((m, tuple((t, values[m]) for t, values, _ in scored)) for m in names)
        stderrs = tuple((m, tuple(ses.get(m) for _, _, ses in scored)) for m in names)
        where = write_downstream_curves(downstream_curve_path(out), DownstreamCurves(
            track.name, f"Downstream scores of the same calibration runs (seed {req.seed}).",
            f"slowrun calibrate --track {track.name} --downstream", track.train_tokens, metrics, stderrs,
            baseline_tokens))
        usable = [m for m, _ in metrics if load_downstream_curves(out).curve(m) is not None]
        print(f"{where}: {len(usable)} of {len(metrics)} downstream metrics improve with data by more than two "
              "standard errors and get a curve", file=sys.stderr)
    print(out)
    return out
