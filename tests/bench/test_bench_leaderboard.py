"""Leaderboard build time for 1,000 records (target: under 10 s), against reading the same records.

The board groups runs into entries (three seeds of each method here), computes their intervals and the
record history with its Welch tests and plots, and adds Slowrun's 52 published results.

Baseline, measured in the same run: json-load and validate the 1,000 record files (what any build must
do at least). Reported: a cold build (no plot cache, default plot workers), a cold build in one
process, and a warm build whose plots come from the cache (a rebuild after adding a few records).

Run: /work/venv/bin/pytest tests/bench/test_bench_leaderboard.py -m bench -s
"""

from __future__ import annotations

import shutil
import time

import pytest

from leaderboard.collect import collect_records
from leaderboard.plots import default_workers
from leaderboard.published import DEFAULT_PUBLISHED
from leaderboard.site import build_site
from tests.leaderboard.factory import OTHER_DATA_HASH, failed_record, make_record, method_hash, write_board

RECORDS = 1000
TARGET_S = 10.0


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-board")
    records = []
    for index in range(RECORDS):
        if index % 10 == 9:
            records.append(failed_record(index))
        elif index % 4 == 3:
            records.append(make_record(index, track__data_hash=OTHER_DATA_HASH))
        else:  # three seeds per method: entries of n = 3
            name = f"method-{index // 3}"
            records.append(make_record(index, method__name=name, method__hash=method_hash(name), seed=index % 3))
    write_board(root / "records", records)
    return root / "records"


def best_of(runs: int, action) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def test_build_1000_records(benchmark, records_dir, tmp_path):
    baseline = best_of(3, lambda: collect_records(records_dir))
    loaded, skipped = collect_records(records_dir)
    assert len(loaded) == RECORDS and not skipped

    out = tmp_path / "site"
    report = benchmark.pedantic(lambda: build_site(records_dir, out, published=DEFAULT_PUBLISHED), rounds=1,
                                iterations=1)
    cold = benchmark.stats.stats.max
    assert report.record_count == RECORDS

    shutil.rmtree(out)
    cpu_start = time.process_time()
    single = best_of(1, lambda: build_site(records_dir, out, workers=1, published=DEFAULT_PUBLISHED))
    single_cpu = time.process_time() - cpu_start  # what the build costs without other load on the machine
    cache = tmp_path / "plot-cache"
    build_site(records_dir, out, plot_cache=cache, published=DEFAULT_PUBLISHED)
    warm = best_of(2, lambda: build_site(records_dir, out, plot_cache=cache, published=DEFAULT_PUBLISHED))

    rows = [
        ("baseline: json-load + validate records", baseline),
        (f"cold build, {default_workers()} plot worker processes", cold),
        ("cold build, 1 process", single),
        ("  its CPU time (this process)", single_cpu),
        ("warm build, plots from the cache", warm),
    ]
    entries = sum(ranked + unranked for *_, ranked, unranked in report.tables)
    assert report.published_count == 52 and entries < RECORDS  # seeds were grouped
    lines = [f"leaderboard build, {RECORDS} records + {report.published_count} published, {entries} entries, "
             f"{report.plot_count} plots, {len(report.tables)} tables"]
    lines += [f"  {label:<42} {seconds:7.2f} s  ({seconds / baseline:5.1f}x baseline)" for label, seconds in rows]
    lines.append(f"  target {TARGET_S:.0f} s: cold {'met' if cold < TARGET_S else 'missed'}, "
                 f"warm {'met' if warm < TARGET_S else 'missed'}")
    print("\n" + "\n".join(lines))
    benchmark.extra_info.update(baseline_s=baseline, cold_s=cold, cold_single_process_s=single,
                                cold_single_process_cpu_s=single_cpu, warm_s=warm,
                                cold_over_baseline=cold / baseline, warm_over_baseline=warm / baseline,
                                plots=report.plot_count, workers=default_workers())
