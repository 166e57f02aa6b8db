"""q0 under a training-time cap, through a real run: the harness's clock, its warm-up record, its grace.

Planned for its epoch budget alone, q0 with `--time-limit 20 --epochs 32` on synthetic laid out cycles for
32 epochs, met the cap after 4.45 and kept 2 snapshots. Now it times warm-up steps before the clock starts,
plans the epochs the cap allows, and stops with a snapshot before it (q0_reference/timed.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.rules.compute import snapshot_grace_s
from harness.run.runner import RunRequest, run_method

PROJECT = Path(__file__).resolve().parents[2]
LIMIT_S = 20.0


def test_q0_plans_its_cycles_to_the_cap_and_snapshots_within_it(synthetic_data, tmp_path):
    run_dir = run_method(RunRequest(method_dir=PROJECT / "submissions" / "q0", track="synthetic", epochs=32.0,
                                    data_dir=synthetic_data, out=tmp_path / "run", progress=False,
                                    time_limit_s=LIMIT_S))
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "ok", record["error"]
    assert record["compute"]["over_cap_s"] is None
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    plan, = [line for line in lines if line.get("event") == "clock plan"]
    assert plan["planned_epochs"] < 32.0 and plan["planned_seconds"] <= 0.95 * plan["seconds_left"]
    assert plan["seconds_left"] == LIMIT_S  # planned before the first real batch: the clock had not started
    # the warm-up (timing both kinds of step) came before the clock, and the record says how long it took
    assert record["timings"]["warmup_s"] >= plan["warmup_s"] > 0
    assert record["metered"]["epochs"] <= plan["planned_epochs"] + 1e-9
    stamps = [json.loads(p.read_text()) for p in (run_dir / "snapshots").glob("*/spec.json")]
    assert stamps and all(s["train_s"] <= LIMIT_S + snapshot_grace_s(LIMIT_S) for s in stamps)
    assert record["timings"]["train_s"] <= LIMIT_S + snapshot_grace_s(LIMIT_S)
    assert len(record["snapshots"]) == len(stamps)
    assert record["ensemble"]["source"] == "prior"
    assert plan["graph_ready"] is True and plan["export_s"] > 0  # the first snapshot's export, before the clock
