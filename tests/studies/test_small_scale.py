"""The small-scale study: its arithmetic (fast) and the reproduction of its committed records (slow)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT / "studies"))

import small_scale  # noqa: E402
from tests.conftest import shared_path  # noqa: E402
from small_scale import Cell, StudySpec, distillation_members, epochs_to_match_ratio  # noqa: E402


def cell(method: str, budget: float, loss: float, seed: int = 0) -> Cell:
    return Cell("t", method, budget, seed, {"result": {"val_loss": loss}})


def test_epochs_to_match_interpolates_in_log_epochs():
    cells = [cell("naive_ensemble", 8, 5.0), cell("naive_ensemble", 32, 4.6),
             cell("q0", 4, 4.9), cell("q0", 16, 4.5)]
    # q0 reaches 4.6 a quarter of the way from 4 to 16 epochs in log2 space: 2 ** (2 + 0.75 * 2)
    target, matched, ratio = epochs_to_match_ratio(cells, "t")
    assert target == 32
    assert matched == pytest.approx(2 ** 3.5)
    assert ratio == pytest.approx(32 / 2 ** 3.5)


def test_epochs_to_match_is_none_when_never_reached_and_uses_seed_means():
    cells = [cell("naive_ensemble", 32, 4.0), cell("q0", 4, 4.9), cell("q0", 16, 4.5, seed=0),
             cell("q0", 16, 4.3, seed=1)]
    assert epochs_to_match_ratio(cells, "t") == (32, None, None)
    assert small_scale.budget_curve(cells, "t", "q0") == [(4, 4.9), (16, pytest.approx(4.4))]


def test_distillation_members_split_by_the_snapshot_meta():
    record = {"snapshots": [
        {"tag": "t0-c000", "val_loss": 5.0, "meta": {"distilled": False}},
        {"tag": "t0-c001", "val_loss": 4.8, "meta": {"distilled": True}},
        {"tag": "t0-c002", "val_loss": 4.7, "meta": {"distilled": True}},
        {"tag": "x", "val_loss": 9.0, "meta": {}}]}  # not a q0 cycle snapshot
    assert distillation_members(record) == ([5.0], [4.8, 4.7])


def test_every_method_gets_the_same_tuning_grid():
    grids = {m: small_scale.tuning_grid(PROJECT / "submissions" / m) for m in small_scale.METHODS}
    shapes = {m: [tuple(k for k, _ in change) for change in grid] for m, grid in grids.items()}
    assert len({json.dumps(v) for v in shapes.values()}) == 1
    assert shapes["q0"][0] == () and len(shapes["q0"]) == 7


@pytest.mark.slow
def test_the_committed_study_records_reproduce(tmp_path, monkeypatch):
    """Re-run every committed study cell from scratch (about an hour per seed on 2 cores) and compare."""
    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")  # the study ran on one thread per process
    committed = small_scale.study_cells(PROJECT / "leaderboard" / "records")
    if not committed:
        pytest.skip("no study records are committed under leaderboard/records")
    tracks = tuple(sorted({c.track for c in committed}))
    if "webtext" in tracks:
        shared_path("webtext")  # skips, saying why, when the shared text is missing
    spec = StudySpec(tracks=tracks, budgets=tuple(sorted({c.budget for c in committed})),
                     seeds=tuple(sorted({c.seed for c in committed})), work_dir=tmp_path / "work",
                     records_dir=tmp_path / "records", progress=False)
    small_scale.run_study(spec)
    again = {(c.track, c.method, c.budget, c.seed): c.loss for c in small_scale.study_cells(tmp_path / "records")}
    for c in committed:
        assert math.isclose(again[(c.track, c.method, c.budget, c.seed)], c.loss, rel_tol=1e-5), c
