"""`slowrun demo`: the whole loop on the offline default track, in minutes on a laptop CPU.

prepare -> single_model, naive_ensemble and q0 at a small budget -> evaluation and data efficiency against
the reference curve shipped for the track -> a leaderboard site. Everything goes under one folder, so a
second demo in the same folder reuses the prepared data and starts the runs afresh.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.run.runner import RunRequest, ensure_prepared, run_method
from harness.rules.tracks import DEFAULT_TRACK, get_track

from harness.common.paths import PROJECT_ROOT  # noqa: E402
DEMO_METHODS = ("single_model", "naive_ensemble", "q0")


@dataclass(frozen=True)
class DemoRequest:
    out: Path = Path("slowrun-demo")
    track: str = DEFAULT_TRACK
    epochs: float = 4.0
    seed: int = 0
    methods: tuple[str, ...] = DEMO_METHODS
    progress: bool = True


def run_demo(req: DemoRequest) -> Path:
    from leaderboard.add import add_record
    from leaderboard.site import build_site

    started = time.monotonic()
    out = Path(req.out)
    track = get_track(req.track)
    data_dir = ensure_prepared(track, out / "prepared" / track.name, req.progress)
    records = out / "records"
    shutil.rmtree(out / "runs", ignore_errors=True)
    shutil.rmtree(records, ignore_errors=True)
    for method in req.methods:
        print(f"\n== {method}: {req.epochs:g} epochs on {track.name} ==", file=sys.stderr, flush=True)
        run_dir = run_method(RunRequest(
            method_dir=PROJECT_ROOT / "submissions" / method, track=track.name, epochs=req.epochs, seed=req.seed,
            data_dir=data_dir, out=out / "runs" / method, progress=req.progress))
        add_record(run_dir, records, new_track=True)
    report = build_site(records, out / "site")
    print(report.summary(), file=sys.stderr)
    index = (out / "site" / "index.html").resolve()
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; open the leaderboard: {index}", file=sys.stderr)
    return index
