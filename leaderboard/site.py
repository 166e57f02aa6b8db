"""Building the static leaderboard site from a folder of record files.

The site is a pure function of the record files: nothing reads the host or the folder's absolute
location, every listing is sorted, and plots are reproducible, so the same records give the same bytes
(the "last update" shown is the newest record's `created`). The clock is read once, to refuse records
stamped in the future; it changes the output only where such a record is in the folder. Every record
is checked against the rules `leaderboard add` enforces (leaderboard/verify.py) before it is used: one
that breaks them is refused, listed with its problems in the build report, and never ranked.

The build writes into a staging folder beside the output and swaps it in at the end, so a failed build
leaves the previous site whole, and it only ever replaces a folder that an earlier build made.

Layout of the output:
    index.html           one sortable table per (track, data hash, compute class) of entries (runs over seeds)
    t/<anchor>.html      one page per table: record history, progression plot, loss-against-budget frontier,
                         loss against epochs and the epochs each method needs to reach the targets
    e/<page>.html        one page per entry: its mean and interval, every seed listed
    r/<page>.html        one page per record; r/<page>.json is the record as published
    records.json/.csv    downloads
    build-report.txt     what was used, which files were skipped or refused, and why
    static/              style sheet and the table sorter
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from harness.formats.records import RECORD_FIELDS, SCHEMA_VERSION, parse_created
from harness.errors import LeaderboardError
from leaderboard.board_plots import (BoardPlot, epochs_plot, frontier_plot, frontier_points, method_styles,
                                     progression_plot)
from leaderboard.collect import LoadedRecord, SkippedFile, collect_records, screen_records
from leaderboard.columns import entry_seed_columns
from leaderboard.downloads import records_csv, records_json
from leaderboard.naming import DEFAULT_RECORDS_DIR, DEFAULT_SITE_DIR, SITE_MARKER, page_names
from leaderboard.plots import PlotCache, k_sweep_plot_spec, loss_plot_spec, render_all
from leaderboard.render import STATIC_DIR, make_environment, trusted_svg
from leaderboard.published import published_records
from leaderboard.settings import DEFAULT_SETTINGS, BoardSettings
from leaderboard.tables import TrackTable, build_tables
from leaderboard.targets import EpochsTable, epochs_table, run_curve


@dataclass(frozen=True)
class BuildReport:
    out_dir: Path
    record_count: int
    tables: tuple[tuple[str, str, str, int, int], ...]  # track, data label, class, ranked, unranked entries
    skipped: tuple[SkippedFile, ...]
    plot_count: int
    last_update: str | None
    published_count: int = 0
    refused: tuple[SkippedFile, ...] = ()  # readable records that break a rule of leaderboard/verify.py

    def summary(self) -> str:
        published = f" and {self.published_count} published results" if self.published_count else ""
        lines = [f"built {self.out_dir}: {self.record_count} records{published} in {len(self.tables)} tables, "
                 f"{self.plot_count} plots"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} record files (see {self.out_dir / 'build-report.txt'}):")
            lines += [f"  {item.relpath}" for item in self.skipped]
        if self.refused:
            lines.append(f"refused {len(self.refused)} records out of bounds, not ranked (see "
                         f"{self.out_dir / 'build-report.txt'}):")
            lines += [f"  {item.relpath}" for item in self.refused]
        return "\n".join(lines)


def last_update_of(records: list[LoadedRecord]) -> str | None:
    """The newest `created` among the records: the board changes only when its records do."""
    if not records:
        return None
    newest = max(parse_created(item.record["created"]) for item in records)
    return newest.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_report_text(report: BuildReport) -> str:
    lines = [
        "Slowrun leaderboard build report",
        f"last update: {report.last_update or 'no records'}",
        f"record schema version: {SCHEMA_VERSION}",
        f"records used: {report.record_count} in {len(report.tables)} tables",
        f"published results: {report.published_count}",
    ]
    for track, data_label, compute_class, ranked, unranked in report.tables:
        lines.append(f"  {track} ({data_label}, class {compute_class}): {ranked} ranked entries, "
                     f"{unranked} unranked")
    lines.append(f"files skipped: {len(report.skipped)}")
    for item in report.skipped:
        lines.append(f"- {item.relpath}")
        lines += [f"    {line}" for line in item.reason.splitlines()]
    lines.append(f"records refused (they break a rule of `leaderboard add`; not ranked): {len(report.refused)}")
    for item in report.refused:
        lines.append(f"- {item.relpath}")
        lines += [f"    {line}" for line in item.reason.splitlines()]
    return "\n".join(lines) + "\n"


def build_site(records_dir: str | Path = DEFAULT_RECORDS_DIR, out_dir: str | Path = DEFAULT_SITE_DIR, *,
               plot_cache: str | Path | None = None, workers: int | None = None,
               published: str | Path | None = None, settings: BoardSettings = DEFAULT_SETTINGS,
               now: datetime | None = None) -> BuildReport:
    """Build the whole site into `out_dir`; unreadable or invalid records are reported, never fatal.

    `plot_cache` names a folder where rendered plots are kept between builds (same output either way);
    `workers` caps the processes that render plots (default: up to 4, one per core); `published` is a
    published-results file (leaderboard/published/slowrun.json) whose rows join as records of kind
    `reported`, in tables of their own. `now` is the time no record may be stamped after (default: the
    clock); a record that breaks any rule of leaderboard/verify.py is refused and reported, not built.
    """
    records_dir, out_dir = Path(records_dir), Path(out_dir)
    records_real, out_real = records_dir.resolve(), out_dir.resolve()
    if out_real.is_relative_to(records_real) or records_real.is_relative_to(out_real):
        raise LeaderboardError(f"--out {out_dir} and --records {records_dir} overlap; build the site in a folder "
                               "outside the records (a rebuild replaces the whole output folder)")
    _check_replaceable(out_dir)
    readable, skipped = collect_records(records_dir)
    measured, refused = screen_records(readable, now=now)
    reported = published_records(published) if published is not None else []
    records = measured + reported
    pages = page_names([item.relpath for item in records])
    tables = build_tables(records, pages, settings)
    by_path = {item.relpath: item for item in records}

    loss_specs = {item.relpath: loss_plot_spec(item.record) for item in records}
    k_specs = {item.relpath: k_sweep_plot_spec(item.record) for item in records}
    curves_of = {item.relpath: run_curve(item.record["curve"]) for item in measured}
    epoch_tables = {t.anchor: epochs_table(t, curves_of, settings.confidence, tables) for t in tables}
    board_plots = {t.anchor: _table_plots(t, epoch_tables[t.anchor]) for t in tables}
    table_specs = [plot.spec for plots in board_plots.values() for plot in plots.values() if plot is not None]
    specs = [spec for spec in [*loss_specs.values(), *k_specs.values(), *table_specs] if spec is not None]
    svgs = render_all(specs, cache=PlotCache(plot_cache) if plot_cache else None, workers=workers)

    last_update = last_update_of(measured)
    report = BuildReport(
        out_dir=out_dir,
        record_count=len(measured),
        tables=tuple((t.track, t.data_label, t.compute_class, len(t.ranked), len(t.unranked)) for t in tables),
        skipped=tuple(skipped),
        plot_count=len(specs),
        last_update=last_update,
        published_count=len(reported),
        refused=tuple(refused),
    )
    published_source = reported[0].record["provenance"] if reported else None
    banner = {"last_update": last_update, "schema_version": SCHEMA_VERSION,
              "record_count": len(measured), "skipped_count": len(skipped), "published_count": len(reported),
              "refused_count": len(refused)}

    env = make_environment()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.building-"))
    staging.chmod(0o755)  # mkdtemp makes it private; a published site must be readable by a web server
    try:
        _write(staging / "index.html", env.get_template("index.html.j2").render(
            root="", banner=banner, tables=tables, skipped=skipped, refused=refused, settings=settings,
            published_source=published_source))
        record_page = env.get_template("record.html.j2")
        entry_page = env.get_template("entry.html.j2")
        table_page = env.get_template("table.html.j2")
        for folder in ("r", "e", "t"):
            (staging / folder).mkdir()
        for table in tables:
            plots = board_plots[table.anchor]
            _write(staging / "t" / f"{table.anchor}.html", table_page.render(
                root="../", banner=banner, table=table, settings=settings, frontier=frontier_points(table),
                plots=plots, epochs=epoch_tables[table.anchor], svgs={name: _svg_for(plot.spec if plot else None, svgs) for name, plot in plots.items()}))
            for entry in table.entries:
                _write(staging / "e" / f"{entry.page}.html", entry_page.render(
                    root="../", banner=banner, table=table, entry=entry, settings=settings,
                    seed_columns=entry_seed_columns(entry.runs)))
                for row in entry.runs:
                    record = by_path[row.relpath].record
                    _write(staging / "r" / f"{row.page}.json", by_path[row.relpath].text)
                    _write(staging / "r" / f"{row.page}.html", record_page.render(
                        root="../", banner=banner, table=table, row=row, entry=entry, record=record,
                        extras={k: v for k, v in sorted(record.items()) if k not in RECORD_FIELDS},
                        loss_svg=_svg_for(loss_specs[row.relpath], svgs),
                        k_svg=_svg_for(k_specs[row.relpath], svgs)))
        _write(staging / "records.json", records_json(tables, by_path, last_update))
        _write(staging / "records.csv", records_csv(tables))
        _write(staging / "build-report.txt", build_report_text(report))
        (staging / "static").mkdir()
        for asset in sorted(STATIC_DIR.iterdir()):
            if asset.is_file():
                shutil.copyfile(asset, staging / "static" / asset.name)
        _write(staging / SITE_MARKER, "A Slowrun leaderboard build; `slowrun leaderboard build` replaces it.\n")
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _table_plots(table: TrackTable, epochs: EpochsTable | None) -> dict[str, BoardPlot | None]:
    """A table page's plots by name, all in the same per-method styles."""
    styles = method_styles(table)
    return {"progression": progression_plot(table, styles), "frontier": frontier_plot(table, styles),
            "epochs": epochs_plot(table, styles, epochs)}


def _svg_for(spec, svgs: dict[str, str]):
    return trusted_svg(svgs[spec.key]) if spec is not None else None


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise LeaderboardError(f"{out_dir} exists and is not a folder; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / SITE_MARKER).is_file():
        raise LeaderboardError(f"{out_dir} holds files that an earlier leaderboard build did not make; "
                               "choose an empty or new folder with --out, or remove it")


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Replace the previous build with the staged one; the old one is removed only once the new is in."""
    _check_replaceable(out_dir)
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    retired = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    retired.rmdir()
    out_dir.rename(retired)
    try:
        staging.rename(out_dir)
    except BaseException:
        retired.rename(out_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)
