"""`slowrun calibrate` writes the multiplier's unit: its own 1x run then scores exactly 1.00x."""

from __future__ import annotations

import json

import pytest

from harness.run.calibrate import CalibrationRequest, calibrate
from harness.eval.efficiency import data_efficiency, load_reference_curve
from tests.runner.test_calibrate import TINY, write_tracks


def test_calibrated_curve_divides_by_what_the_1x_baseline_was_served(tmp_path):
    tracks = write_tracks(tmp_path, 400)
    out = tmp_path / "mini.json"
    calibrate(CalibrationRequest(track="mini", factors=(1, 2), overrides=TINY, data_dir=tmp_path / "prepared",
                                 work_dir=tmp_path / "work", out=out, track_files=(tracks,), progress=False))
    record = json.loads((tmp_path / "work" / "run-mini-x1" / "record.json").read_text())
    served = record["metered"]["train_tokens"]
    assert served < 3000  # whole windows and whole batches only: less than the nominal 3,000
    assert json.loads(out.read_text())["baseline_tokens"] == served
    curve = load_reference_curve(out)
    assert curve.train_tokens == 3000 and curve.denominator == served
    eff = data_efficiency(record["result"]["val_loss"], curve)
    assert eff.multiplier == pytest.approx(1.0, abs=1e-12) and eff.label == "1.00x"
