"""The small-scale study: single_model, naive_ensemble and q0 at growing epoch budgets on CPU tracks.

    python studies/small_scale.py run    [--tracks webtext,synthetic] [--budgets 2,4,8,16,32] [--seeds 0]
    python studies/small_scale.py report [--records leaderboard/records] [--out docs/study]

`run` trains every (track, seed, budget, method) cell whose record is not yet on the board, files each
record under `leaderboard/records/<track>/` and can be stopped and started again: finished cells are
skipped, so a long study accumulates over several sittings. `report` reads only the records and writes a
Markdown table and PNG plots (validation loss and data efficiency against the epoch budget, one line per
method), the q0 members before and after chain distillation starts, and the epochs-to-match ratio of q0
against the naive ensemble's largest budget.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

METHODS = ("single_model", "naive_ensemble", "q0")
STUDY_PREFIX = "study"
# What `tune` chose (docs/study/tuning-webtext.md): the best of one grid per method on webtext at 8
# epochs. Every method preferred batches of 4 sequences (194 optimizer steps per epoch) to its defaults.
TUNED: dict[str, tuple[tuple[str, str], ...]] = {
    "single_model": (("batch_size", "4"),),
    "naive_ensemble": (("batch_size", "4"),),
    "q0": (("batch_size", "4"),),
}


@dataclass(frozen=True)
class StudySpec:
    tracks: tuple[str, ...] = ("webtext", "synthetic")
    methods: tuple[str, ...] = METHODS
    budgets: tuple[float, ...] = (2, 4, 8, 16, 32)
    seeds: tuple[int, ...] = (0,)
    work_dir: Path = Path("study-runs")
    records_dir: Path = PROJECT_ROOT / "leaderboard" / "records"
    overrides: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=lambda: dict(TUNED))  # per method
    progress: bool = True


def cell_id(track: str, method: str, budget: float, seed: int) -> str:
    """The run id of one study cell, unique on the board; the record's file name derives from it."""
    return f"{STUDY_PREFIX}-{track}-{method}-e{budget:g}-s{seed}"


def _filed(records_dir: Path, track: str, method: str, run_id: str) -> bool:
    from leaderboard.naming import slug

    return (records_dir / slug(track) / f"{slug(method)}-{slug(run_id)}.json").exists()


def run_study(spec: StudySpec) -> list[Path]:
    """Train every cell that has no record yet, cheapest budgets first; return the records filed."""
    from harness.run.runner import RunRequest, ensure_prepared, run_method
    from harness.rules.tracks import get_track
    from leaderboard.add import add_record

    filed = []
    for track_name in spec.tracks:
        track = get_track(track_name)
        data_dir = ensure_prepared(track, spec.work_dir / "prepared" / track_name, spec.progress)
        for seed in spec.seeds:
            for budget in sorted(spec.budgets):
                for method in spec.methods:
                    run_id = cell_id(track_name, method, budget, seed)
                    if _filed(spec.records_dir, track_name, method, run_id):
                        continue
                    out = spec.work_dir / "runs" / track_name / run_id
                    if out.exists():  # an interrupted cell: start it again rather than trust a partial run
                        import shutil

                        shutil.rmtree(out)
                    print(f"\n== {track_name} {run_id} ==", file=sys.stderr, flush=True)
                    run_dir = run_method(RunRequest(
                        method_dir=PROJECT_ROOT / "submissions" / method, track=track_name, epochs=float(budget),
                        seed=seed, overrides=spec.overrides.get(method, ()), data_dir=data_dir, out=out,
                        progress=spec.progress))
                    filed.append(add_record(run_dir, spec.records_dir, new_track=True))
    return filed


def refresh_study(spec: StudySpec, downstream_data: Path | None = None, pattern: str = "*") -> list[Path]:
    """Re-evaluate every finished cell from its snapshots (cached log-probabilities make this cheap) and
    replace its record on the board: after a reference curve changes, or to add downstream scores."""
    from harness.common.atomic import write_text_atomic
    from harness.formats.records import load_record, record_to_json
    from harness.run.runner import evaluate_existing
    from leaderboard.add import record_destination

    refreshed = []
    for track_name in spec.tracks:
        for run_dir in sorted((spec.work_dir / "runs" / track_name).glob(f"{STUDY_PREFIX}-{pattern}")):
            if not (run_dir / "record.json").exists():
                continue
            evaluate_existing(run_dir, progress=spec.progress, downstream=True if downstream_data else None,
                              downstream_data=downstream_data)
            record = load_record(run_dir / "record.json")
            destination = record_destination(record, spec.records_dir)
            write_text_atomic(destination, record_to_json(record))
            refreshed.append(destination)
    return refreshed


# ---- tuning -----------------------------------------------------------------------------------------

def tuning_grid(method_dir: Path) -> list[tuple[tuple[str, str], ...]]:
    """The same grid for every method around its own defaults: the defaults, learning rate x2 and /2,
    weight decay x3 and /3, batch size x2 and /2 (one change at a time)."""
    from harness.run.entry_check import check_method

    spec, problems = check_method(method_dir)
    if problems:
        raise SystemExit(f"{method_dir}: " + "; ".join(problems))
    hp = dict(spec.hparams)
    grid: list[tuple[tuple[str, str], ...]] = [()]
    for key, factors in (("lr", (2.0, 0.5)), ("weight_decay", (3.0, 1 / 3)), ("batch_size", (2, 0.5))):
        for f in factors:
            value = hp[key] * f
            grid.append(((key, str(int(value)) if key == "batch_size" else f"{value:.4g}"),))
    return grid


def run_tuning(track_name: str, budget: float, methods: tuple[str, ...], work_dir: Path,
               progress: bool) -> list[dict]:
    """Train each method's grid at one budget; rows of (method, overrides, val loss), best first."""
    from harness.run.runner import RunRequest, ensure_prepared, run_method
    from harness.rules.tracks import get_track

    track = get_track(track_name)
    data_dir = ensure_prepared(track, work_dir / "prepared" / track_name, progress)
    rows = []
    for method in methods:
        method_dir = PROJECT_ROOT / "submissions" / method
        for overrides in tuning_grid(method_dir):
            name = "-".join(f"{k}{v}" for k, v in overrides) or "defaults"
            out = work_dir / "tuning" / track_name / f"{method}-e{budget:g}-{name}"
            if not (out / "record.json").exists():
                import shutil

                shutil.rmtree(out, ignore_errors=True)
                run_method(RunRequest(method_dir=method_dir, track=track_name, epochs=float(budget), seed=0,
                                      overrides=overrides, data_dir=data_dir, out=out, progress=progress))
            record = json.loads((out / "record.json").read_text(encoding="utf-8"))
            loss = record["result"]["val_loss"] if record["status"] == "ok" else math.inf
            rows.append({"method": method, "overrides": dict(overrides), "val_loss": loss,
                         "status": record["status"], "train_s": record["timings"]["train_s"]})
    return sorted(rows, key=lambda r: (r["method"], r["val_loss"]))


def tuning_markdown(rows: list[dict], track: str, budget: float) -> str:
    lines = [f"# Tuning on {track} at {budget:g} epochs", "",
             "Generated by `python studies/small_scale.py tune`. The same grid for every method, around its "
             "own defaults, one change at a time; ranked by the final predictor's validation loss (seed 0).", "",
             "| method | change | val loss | status | train s |", "|---|---|---|---|---|"]
    for r in rows:
        change = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "defaults"
        lines.append(f"| {r['method']} | {change} | {r['val_loss']:.4f} | {r['status']} | {r['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


# ---- the report -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    track: str
    method: str
    budget: float
    seed: int
    record: dict

    @property
    def loss(self) -> float:
        return self.record["result"]["val_loss"]


def study_cells(records_dir: Path) -> list[Cell]:
    """Every valid, finished study record on the board (other records are not part of the study)."""
    from leaderboard.collect import collect_records

    cells = []
    for loaded in collect_records(records_dir)[0]:
        record = loaded.record
        if not str(record["run_id"]).startswith(STUDY_PREFIX + "-") or record["status"] != "ok":
            continue
        cells.append(Cell(record["track"]["name"], record["method"]["name"], float(record["budget_epochs"]),
                          int(record["seed"]), record))
    return sorted(cells, key=lambda c: (c.track, c.method, c.budget, c.seed))


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _by(cells: list[Cell], track: str, method: str) -> dict[float, list[Cell]]:
    grouped: dict[float, list[Cell]] = {}
    for c in cells:
        if c.track == track and c.method == method:
            grouped.setdefault(c.budget, []).append(c)
    return grouped


def budget_curve(cells: list[Cell], track: str, method: str) -> list[tuple[float, float]]:
    """(budget, mean final validation loss over seeds), by budget."""
    return [(b, _mean_sd([c.loss for c in group])[0]) for b, group in sorted(_by(cells, track, method).items())]


def epochs_to_match_ratio(cells: list[Cell], track: str, method: str = "q0",
                          against: str = "naive_ensemble") -> tuple[float | None, float | None, float | None]:
    """(against's largest budget, epochs `method` needs to reach its loss, the ratio), from final losses
    at each budget, linear in log-epochs between budgets; None where `method` never gets there."""
    mine, theirs = budget_curve(cells, track, method), budget_curve(cells, track, against)
    if not mine or not theirs:
        return None, None, None
    target_budget, target = theirs[-1]
    if mine[0][1] <= target:
        return target_budget, mine[0][0], target_budget / mine[0][0]
    for (b0, l0), (b1, l1) in zip(mine, mine[1:]):
        if l1 <= target:
            t = (l0 - target) / (l0 - l1)
            matched = math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))
            return target_budget, matched, target_budget / matched
    return target_budget, None, None


def distillation_members(record: dict) -> tuple[list[float], list[float]]:
    """Validation losses of q0's members taken before chain distillation started, and of those after."""
    before, after = [], []
    for snap in record["snapshots"]:
        meta = snap.get("meta") or {}
        if "distilled" in meta:
            (after if meta["distilled"] else before).append(snap["val_loss"])
    return before, after


def _fmt(mean: float, sd: float | None, digits: int = 4) -> str:
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _efficiency_text(cells: list[Cell]) -> str:
    effs = [c.record["result"]["data_efficiency"] for c in cells]
    values = [e["multiplier"] for e in effs if e["multiplier"] is not None]
    if len(values) == len(effs):
        return f"{statistics.fmean(values):.2f}x"
    return ", ".join(sorted({e["bound"] or e["flag"] or "?" for e in effs if e["multiplier"] is None}))


def report_markdown(cells: list[Cell]) -> str:
    lines = ["# Small-scale study: single model, naive ensemble and q0", "",
             "Generated by `python studies/small_scale.py report` from the study records in "
             "`leaderboard/records/` (run ids `study-*`). Losses are validation nats/token of each run's final "
             "predictor (mean ± sd over seeds where there is more than one); data efficiency is against the "
             "track's calibrated reference curve.", ""]
    for track in sorted({c.track for c in cells}):
        budgets = sorted({c.budget for c in cells if c.track == track})
        methods = [m for m in METHODS if any(c.track == track and c.method == m for c in cells)]
        lines += [f"## {track}", "", "| method | " + " | ".join(f"{b:g} ep" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for method in methods:
            grouped = _by(cells, track, method)
            row = []
            for b in budgets:
                group = grouped.get(b, [])
                if not group:
                    row.append("")
                    continue
                mean, sd = _mean_sd([c.loss for c in group])
                k = group[0].record["result"]["ensemble_size"]
                row.append(f"{_fmt(mean, sd)} ({_efficiency_text(group)}, K={k}, n={len(group)})")
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        for against in ("naive_ensemble", "single_model"):
            lines += ["", _match_text(cells, track, against)]
        q0 = [c for c in cells if c.track == track and c.method == "q0"]
        if q0:
            lines += ["", "q0 members (validation loss of single snapshots):", "",
                      "| budget | seed | plan | members before distillation (best / mean) | "
                      "members after distillation starts (best / mean) | final predictor |", "|---|---|---|---|---|---|"]
            for c in q0:
                before, after = distillation_members(c.record)
                plan = _plan_text(c.record)
                show = (lambda xs: f"{min(xs):.4f} / {statistics.fmean(xs):.4f} ({len(xs)})" if xs else "none")
                lines.append(f"| {c.budget:g} | {c.seed} | {plan} | {show(before)} | {show(after)} | {c.loss:.4f} |")
        lines.append("")
    return "\n".join(lines)


def _match_text(cells: list[Cell], track: str, against: str) -> str:
    target_budget, matched, ratio = epochs_to_match_ratio(cells, track, "q0", against)
    if target_budget is None:
        return f"Epochs to match against {against}: not enough cells yet."
    head = f"Epochs to match against {against}'s {target_budget:g}-epoch loss"
    if ratio is None:
        return f"{head}: q0 does not reach it within its budgets."
    if matched == min(c.budget for c in cells if c.track == track and c.method == "q0"):
        return f"{head}: q0 beats it already at its smallest budget ({matched:g} epochs), at least {ratio:.2f}x fewer."
    return f"{head}: q0 reaches it at about {matched:.2f} epochs, {ratio:.2f}x fewer."


def _plan_text(record: dict) -> str:
    tags = [s["tag"] for s in record["snapshots"]]
    trajectories = sorted({t.split("-")[0] for t in tags})
    return f"{len(trajectories)} traj., {len(tags)} snapshots"


def plot_study(cells: list[Cell], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for track in sorted({c.track for c in cells}):
        fig, (ax_loss, ax_eff) = plt.subplots(1, 2, figsize=(11, 4.2))
        for method in METHODS:
            grouped = _by(cells, track, method)
            if not grouped:
                continue
            budgets = sorted(grouped)
            stats = [_mean_sd([c.loss for c in grouped[b]]) for b in budgets]
            ax_loss.errorbar(budgets, [m for m, _ in stats], yerr=[sd or 0.0 for _, sd in stats], marker="o",
                             capsize=3, label=method)
            eff = [[c.record["result"]["data_efficiency"]["multiplier"] for c in grouped[b]] for b in budgets]
            pts = [(b, statistics.fmean(v)) for b, v in zip(budgets, eff) if v and all(x is not None for x in v)]
            if pts:
                ax_eff.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        budgets = sorted({c.budget for c in cells if c.track == track})
        for ax, ylabel in ((ax_loss, "validation loss (nats/token)"), (ax_eff, "data efficiency (x)")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
            ax.set_xlabel("epoch budget")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(f"{track}: final predictor against the epoch budget")
        fig.tight_layout()
        path = out_dir / f"study-{track}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(records_dir: Path, out_dir: Path) -> Path:
    cells = study_cells(records_dir)
    if not cells:
        raise SystemExit(f"no study records (run ids {STUDY_PREFIX}-*) under {records_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_study(cells, out_dir)
    text = report_markdown(cells) + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    path = out_dir / "README.md"
    path.write_text(text, encoding="utf-8")
    (out_dir / "summary.json").write_text(json.dumps(
        {track: {m: budget_curve(cells, track, m) for m in METHODS} for track in sorted({c.track for c in cells})},
        indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _overrides(items: list[str]) -> dict[str, tuple[tuple[str, str], ...]]:
    """`method:key=value` strings as {method: ((key, value), ...)}."""
    out: dict[str, list[tuple[str, str]]] = {}
    for item in items:
        method, sep, kv = item.partition(":")
        key, eq, value = kv.partition("=")
        if not sep or not eq:
            raise SystemExit(f"--set takes METHOD:KEY=VALUE, got {item!r}")
        out.setdefault(method, []).append((key, value))
    return {m: tuple(v) for m, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train the missing cells and file their records")
    run.add_argument("--tracks", default="webtext,synthetic")
    run.add_argument("--methods", default=",".join(METHODS))
    run.add_argument("--budgets", default="2,4,8,16,32")
    run.add_argument("--seeds", default="0")
    run.add_argument("--work-dir", type=Path, default=Path("study-runs"))
    run.add_argument("--records", type=Path, default=StudySpec.records_dir)
    run.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                     help="override a method's hyperparameter (replaces that method's tuned settings)")
    run.add_argument("--quiet", action="store_true")
    refresh = sub.add_parser("refresh", help="re-evaluate finished cells and replace their records")
    refresh.add_argument("--tracks", default="webtext,synthetic")
    refresh.add_argument("--work-dir", type=Path, default=Path("study-runs"))
    refresh.add_argument("--records", type=Path, default=StudySpec.records_dir)
    refresh.add_argument("--downstream-data", type=Path, help="also score ARC-Easy, PIQA and SciQ (text tracks)")
    refresh.add_argument("--cells", default="*", help="glob over cell ids after 'study-', e.g. 'q0-e32-*'")
    refresh.add_argument("--quiet", action="store_true")
    tune = sub.add_parser("tune", help="the same small grid for every method at one budget")
    tune.add_argument("--track", default="webtext")
    tune.add_argument("--budget", type=float, default=8.0)
    tune.add_argument("--methods", default=",".join(METHODS))
    tune.add_argument("--work-dir", type=Path, default=Path("study-runs"))
    tune.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "study")
    tune.add_argument("--quiet", action="store_true")
    rep = sub.add_parser("report", help="table and plots from the study records")
    rep.add_argument("--records", type=Path, default=StudySpec.records_dir)
    rep.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "study")
    args = parser.parse_args(argv)
    if args.command == "run":
        spec = StudySpec(tracks=tuple(args.tracks.split(",")), methods=tuple(args.methods.split(",")),
                         budgets=_floats(args.budgets), seeds=tuple(int(s) for s in args.seeds.split(",")),
                         work_dir=args.work_dir, records_dir=args.records,
                         overrides={**TUNED, **_overrides(args.set)},
                         progress=not args.quiet)
        for path in run_study(spec):
            print(path)
    elif args.command == "refresh":
        spec = StudySpec(tracks=tuple(args.tracks.split(",")), work_dir=args.work_dir, records_dir=args.records,
                         progress=not args.quiet)
        for path in refresh_study(spec, args.downstream_data, args.cells):
            print(path)
    elif args.command == "tune":
        rows = run_tuning(args.track, args.budget, tuple(args.methods.split(",")), args.work_dir, not args.quiet)
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"tuning-{args.track}.md"
        path.write_text(tuning_markdown(rows, args.track, args.budget), encoding="utf-8")
        print(path)
    else:
        print(write_report(args.records, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
