"""The training-time cap of a compute class, attacked by methods that try to train past it.

The clock is the data server's: it starts with the first real batch and stops when training ends. The
cap is a short `--time-limit` here (the classes' own caps are minutes to hours); each method's steps sleep,
so a few seconds hold a few steps.
"""

from __future__ import annotations

import json

import pytest

from harness.rules.compute import snapshot_grace_s
from tests.trust.test_attacks import metrics, run

LIMIT_S = 2.0
GRACE_S = snapshot_grace_s(LIMIT_S)


def snapshot_stamps(run_dir) -> dict[str, dict]:
    return {p.name: json.loads((p / "spec.json").read_text()) for p in (run_dir / "snapshots").iterdir()
            if p.is_dir() and not p.name.startswith(".")}


def test_a_method_that_stops_at_the_cap_keeps_every_snapshot_and_is_timed_by_the_server(synthetic_data, tmp_path):
    run_dir, record = run("timed_honest", synthetic_data, tmp_path, epochs=1000.0, time_limit_s=LIMIT_S)
    assert record["status"] == "ok", record["error"]
    train_s = record["timings"]["train_s"]
    # the server's clock: at least the cap (the refused batch came after it), the final save within the grace
    assert LIMIT_S <= train_s <= LIMIT_S + GRACE_S
    sessions = json.loads((run_dir / "sessions.json").read_text())["train_s"]
    assert sessions == [pytest.approx(train_s)]
    # the 1.5 s pause before the first batch is warm-up, not training
    assert record["timings"]["warmup_s"] >= 1.5
    stamps = snapshot_stamps(run_dir)
    assert "final" in stamps and len(stamps) >= 2
    assert all(s["train_s"] <= LIMIT_S + GRACE_S for s in stamps.values())
    assert record["compute"]["time_limit_s"] == LIMIT_S
    assert record["compute"]["over_cap_s"] is None
    # a cap other than the class's own is for trying things out: recorded, never ranked
    assert any("time limit" in reason for reason in record["unranked_reasons"])
    assert record["timings"]["wall_s"] >= train_s + record["timings"]["warmup_s"]


def test_warm_up_batches_meter_no_tokens_and_no_time(synthetic_data, tmp_path):
    run_dir, record = run("warmup_only", synthetic_data, tmp_path, epochs=1.0, time_limit_s=60.0)
    assert record["status"] == "ok", record["error"]
    seq_len = record["track"]["seq_len"]
    assert record["metered"]["train_tokens"] == 8 * seq_len  # the one real batch, none of the 200 warm-up ones
    assert record["metered"]["per_stream"] == {"main": 8 * seq_len}
    logged = next(line for line in metrics(run_dir) if "train_s_before_data" in line)
    assert logged["train_s_before_data"] == 0.0  # 200 warm-up steps and a 2 s pause: the clock had not started
    assert record["timings"]["warmup_s"] >= 2.0
    assert record["timings"]["train_s"] < 2.0


def test_a_snapshot_after_the_cap_and_its_grace_does_not_count(synthetic_data, tmp_path):
    wait = GRACE_S + 3.0
    run_dir, record = run("timed_trains_past", synthetic_data, tmp_path, epochs=1000.0, time_limit_s=LIMIT_S,
                          target=str(wait))
    # refused at the server if the save arrives first, or stopped by the runner while still training
    assert record["status"] == "over-time", record["error"]
    assert record["error"]["type"] == "OverTime"
    stamps = snapshot_stamps(run_dir)
    assert "late" not in stamps and stamps  # the model trained past the cap is not kept; earlier ones are
    assert all(s["train_s"] <= LIMIT_S + GRACE_S for s in stamps.values())
    assert {s["tag"] for s in record["snapshots"]} == set(stamps)
    assert record["result"] is not None  # evaluated on the snapshots from before the cap
    assert record["compute"]["over_cap_s"] > GRACE_S
    assert any("past the" in reason for reason in record["unranked_reasons"])


def test_a_method_that_never_stops_is_stopped_after_the_cap_with_its_snapshots_from_before(synthetic_data, tmp_path):
    run_dir, record = run("timed_never_stops", synthetic_data, tmp_path, epochs=1000.0, time_limit_s=LIMIT_S)
    assert record["status"] == "over-time"
    assert record["error"]["type"] == "OverTime"
    assert LIMIT_S + GRACE_S < record["timings"]["train_s"] < LIMIT_S + GRACE_S + 5.0
    stamps = snapshot_stamps(run_dir)
    # a snapshot taken just after the cap (its last admitted step ran past it) is within the grace
    assert stamps and all(s["train_s"] <= LIMIT_S + GRACE_S for s in stamps.values())
    assert record["result"] is not None
    assert any("past the" in reason for reason in record["unranked_reasons"])
