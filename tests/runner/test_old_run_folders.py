"""Run folders written by an earlier harness (commit 6d94ceb, before the modules moved into their layers)
still resume, re-evaluate and verify.

The fixture holds two single_model runs on the synthetic track made by that commit: one finished (its
evaluation caches removed, so evaluating it again recomputes everything) and one killed with SIGKILL
after its first snapshot and checkpoint. Their run.json files name the folders they were made in; the
test points them at this checkout's method and the test's synthetic data (the same data hash). Made with
SLOWRUN_NUM_THREADS=1, as the suite runs."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from harness.run.runner import evaluate_existing, resume_run
from harness.run.reverify import reverify_run

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "runs-6d94ceb.tar.gz"
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def old_runs(tmp_path, synthetic_data):
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    for name in ("finished", "killed"):
        spec_path = tmp_path / name / "run.json"
        spec = json.loads(spec_path.read_text())
        spec["method_dir"] = str((PROJECT / "submissions" / "single_model").resolve())
        spec["data_dir"] = str(synthetic_data)
        spec_path.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    return tmp_path


def _losses(run_dir: Path) -> list[float]:
    return [line["loss"] for line in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in line]


def test_an_old_killed_run_resumes_to_the_old_uninterrupted_run(old_runs):
    finished, killed = old_runs / "finished", old_runs / "killed"
    before = json.loads((finished / "record.json").read_text())
    resume_run(killed, progress=False)
    after = json.loads((killed / "record.json").read_text())
    assert after["status"] == "ok" and after["resumed"]
    assert after["metered"] == before["metered"]
    assert [s["tag"] for s in after["snapshots"]] == [s["tag"] for s in before["snapshots"]]
    # the old code's losses, continued by this code: equal to the last bits on the machine that made the
    # fixture (one torch thread, as the suite runs); another CPU may round differently, so a tolerance far
    # below what a wrong position in the data or a lost optimizer state would change (~1e-2)
    assert _losses(killed) == pytest.approx(_losses(finished), rel=1e-5)
    assert len(_losses(killed)) == len(_losses(finished))
    assert after["result"]["val_loss"] == pytest.approx(before["result"]["val_loss"], rel=1e-6)


def test_an_old_finished_run_reevaluates_and_verifies(old_runs, synthetic_data):
    finished = old_runs / "finished"
    before = json.loads((finished / "record.json").read_text())
    assert not (finished / "eval").exists()  # nothing cached: every number is computed again
    evaluate_existing(finished, progress=False)
    after = json.loads((finished / "record.json").read_text())
    assert after["status"] == "ok"
    assert after["result"]["val_loss"] == pytest.approx(before["result"]["val_loss"], rel=1e-6)
    assert reverify_run(finished, before, data_dir=synthetic_data) == []
