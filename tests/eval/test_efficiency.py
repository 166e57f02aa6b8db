"""Data-efficiency multipliers on the fineweb table (worked by hand), bounds, curve files, epochs-to-match."""

from __future__ import annotations

import json

import pytest

from harness.eval.efficiency import (
    ABOVE_TABLE,
    BELOW_TABLE,
    ReferenceCurve,
    ReferenceCurveError,
    data_efficiency,
    epochs_ratio,
    epochs_to_match,
    load_reference_curve,
    lower_envelope,
    write_reference_curve,
)
from harness.errors import SlowrunError
from harness.eval.prior import CurvePoint

FINEWEB_TABLE = [(200e6, 3.703), (400e6, 3.370), (600e6, 3.200), (800e6, 3.123), (1e9, 3.046), (2e9, 2.892)]


def test_builtin_fineweb_curve_is_the_published_envelope():
    curve = load_reference_curve("fineweb")
    assert curve.track == "fineweb" and curve.train_tokens == 100_000_000
    assert [(float(t), v) for t, v in curve.points] == FINEWEB_TABLE
    assert curve.envelope() == curve.points


def test_fineweb_multipliers_worked_by_hand():
    curve = load_reference_curve("fineweb")
    # 3.0034 lies between 1B (3.046) and 2B (2.892): fraction (3.046 - 3.0034) / (3.046 - 2.892)
    # = 0.0426 / 0.154 = 0.27662 of the way, so 1B + 0.27662 * 1B = 1.27662B tokens = 12.77 x 100M.
    high = data_efficiency(3.0034, curve)
    assert high.multiplier == pytest.approx((1e9 + 0.0426 / 0.154 * 1e9) / 100e6, rel=1e-9)
    assert round(high.multiplier, 2) == 12.77 and high.label == "12.77x"
    assert high.bound is None and high.flag is None
    assert high.equivalent_tokens == pytest.approx(1e9 + 0.0426 / 0.154 * 1e9, rel=1e-9)
    # 3.0476 lies between 800M (3.123) and 1B (3.046): fraction 0.0754 / 0.077 = 0.97922, so
    # 800M + 0.97922 * 200M = 995.84M tokens = 9.96 x 100M.
    low = data_efficiency(3.0476, curve)
    assert low.multiplier == pytest.approx((800e6 + 0.0754 / 0.077 * 200e6) / 100e6, rel=1e-9)
    assert round(low.multiplier, 2) == 9.96


def test_table_endpoints_are_exact_and_outside_is_a_bound():
    curve = load_reference_curve("fineweb")
    assert data_efficiency(2.892, curve).multiplier == pytest.approx(20.0)
    assert data_efficiency(3.703, curve).multiplier == pytest.approx(2.0)
    below = data_efficiency(2.85, curve)
    assert below.multiplier is None and below.bound == ">20x" and below.flag == BELOW_TABLE
    assert below.label == ">20x"
    above = data_efficiency(3.9, curve)
    assert above.multiplier is None and above.bound == "<2x" and above.flag == ABOVE_TABLE
    with pytest.raises(SlowrunError, match="non-finite"):
        data_efficiency(float("nan"), curve)


def test_lower_envelope_drops_points_that_more_data_does_not_improve():
    # Best-of-sizes table: at 200M the smaller model wins; 600M is no better than 400M.
    raw = [(400, 3.0), (200, 3.5), (200, 3.4), (600, 3.1), (800, 2.9)]
    assert lower_envelope(raw) == ((200, 3.4), (400, 3.0), (800, 2.9))
    curve = ReferenceCurve("t", "", "", tuple(raw), train_tokens=100)
    # Between 400 (3.0) and 800 (2.9): 2.95 is half way -> 600 tokens -> 6x; the dropped 600-point is ignored.
    assert data_efficiency(2.95, curve).multiplier == pytest.approx(6.0)


def test_write_then_load_round_trip_and_name_or_path(tmp_path):
    path = tmp_path / "curves" / "small.json"
    written = write_reference_curve(
        path, [(100_000, 4.0), (200_000, 3.6), (400_000, 3.3), (800_000, 3.1)], "small", 100_000,
        description="single-model baseline", source="slowrun calibrate",
    )
    raw = json.loads(path.read_text())
    assert raw["points"][1] == {"tokens": 200_000, "loss": 3.6}
    loaded = load_reference_curve(path)
    assert loaded == written == load_reference_curve(str(path))
    # 3.2 is half way between 400K (3.3) and 800K (3.1): 600K tokens = 6x of 100K.
    assert data_efficiency(3.2, path).multiplier == pytest.approx(6.0)
    assert data_efficiency(3.0, loaded).bound == ">8x"
    assert [p.name for p in path.parent.iterdir()] == ["small.json"]


@pytest.mark.parametrize(
    "points,message",
    [
        ([(100, 4.0), (200, 4.1)], "loss must fall"),
        ([(100, 4.0), (100, 3.0)], "strictly increase"),
        ([(200, 4.0), (100, 3.0)], "strictly increase"),
        ([(100, 4.0)], "at least 2"),
        ([(0, 4.0), (100, 3.0)], "positive whole"),
        ([(100.5, 4.0), (200, 3.0)], "positive whole"),
        ([(100, float("nan")), (200, 3.0)], "positive finite"),
        ([(100, -1.0), (200, -2.0)], "positive finite"),
        ([(100, "4"), (200, 3.0)], "must be a number"),
    ],
)
def test_writer_refuses_nonsense(tmp_path, points, message):
    path = tmp_path / "bad.json"
    with pytest.raises(ReferenceCurveError, match=message):
        write_reference_curve(path, points, "small", 100)
    assert not path.exists()


def test_writer_refuses_bad_train_tokens_and_loader_reports_bad_files(tmp_path):
    with pytest.raises(ReferenceCurveError, match="train_tokens"):
        write_reference_curve(tmp_path / "c.json", [(1, 2.0), (2, 1.0)], "t", 0)
    with pytest.raises(ReferenceCurveError, match="not found.*fineweb"):
        load_reference_curve("no-such-curve")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReferenceCurveError, match="JSON"):
        load_reference_curve(bad)
    bad.write_text(json.dumps({"track": "t", "points": [{"tokens": 1, "loss": 2.0}, {"tokens": 2, "loss": 1.0}]}))
    with pytest.raises(ReferenceCurveError, match="train_tokens"):
        load_reference_curve(bad)
    flat = {"track": "t", "train_tokens": 1, "points": [{"tokens": 1, "loss": 2.0}, {"tokens": 2, "loss": 2.0}]}
    bad.write_text(json.dumps(flat))
    with pytest.raises(ReferenceCurveError, match="never falls"):
        load_reference_curve(bad)


def test_epochs_to_match_interpolates_linearly_between_curve_points():
    baseline = [(1.0, 4.0), (2.0, 3.5), (4.0, 3.2), (8.0, 3.0)]  # final loss 3.0 at 8 epochs
    method = [(0.5, 3.9), (1.0, 3.4), (2.0, 2.9), (3.0, 2.8)]
    # The method crosses 3.0 between (1, 3.4) and (2, 2.9): 1 + 0.4 / 0.5 = 1.8 epochs; 8 / 1.8 = 4.44x.
    assert epochs_to_match(method, baseline) == pytest.approx(1.8)
    assert epochs_ratio(method, baseline) == pytest.approx(8.0 / 1.8)
    # The baseline reaches its own final loss only at its last point.
    assert epochs_to_match(baseline, baseline) == pytest.approx(8.0)
    # Already below the target at the first point: that point, no extrapolation before it.
    assert epochs_to_match([(0.5, 2.0), (1.0, 1.9)], baseline) == pytest.approx(0.5)
    # Never reaching it.
    assert epochs_to_match([(1.0, 3.9), (9.0, 3.1)], baseline) is None
    assert epochs_ratio([(1.0, 3.9), (9.0, 3.1)], baseline) is None


def test_epochs_to_match_takes_first_crossing_and_curve_points():
    target = [(5.0, 3.0)]
    bumpy = [(1.0, 3.2), (2.0, 2.8), (3.0, 3.3), (4.0, 2.5)]
    assert epochs_to_match(bumpy, target) == pytest.approx(1.5)
    points = [CurvePoint(e, v, (0,), (1.0,), v, "single") for e, v in [(2.0, 3.4), (1.0, 3.6)]]
    # Out-of-order points are sorted by epochs: 3.6 at 1 epoch, 3.4 at 2 epochs; 3.5 is reached at 1.5.
    assert epochs_to_match(points, [(1.0, 3.5)]) == pytest.approx(1.5)
    with pytest.raises(SlowrunError, match="no points"):
        epochs_to_match([], target)


# ---- the multiplier's unit: numerator and denominator both count what the baseline is served -----------
# The shipped small-track curves hold the baseline's 1x run, single_model trained once on the track's whole
# training split (no fitness carve), metered at 65,536 (synthetic: every window of the split) and 99,328
# (webtext: whole batches of its 100,000 tokens) served tokens; that count is the curve's baseline_tokens.
CALIBRATED_1X = {"synthetic": (65_536, 2.740144847555812), "webtext": (99_328, 6.367873729196607)}


@pytest.mark.parametrize("name", sorted(CALIBRATED_1X))
def test_calibration_baseline_on_the_tracks_own_data_scores_exactly_one(name):
    served, loss = CALIBRATED_1X[name]
    curve = load_reference_curve(name)
    assert (served, loss) in curve.points and curve.baseline_tokens == served  # the 1x run, as measured
    eff = data_efficiency(loss, curve)
    assert eff.multiplier == 1.0 and eff.label == "1.00x"
    assert eff.equivalent_tokens == served


def test_synthetic_multiplier_worked_by_hand():
    # Half way in loss between the 1x point (65,536 tokens, 2.74014) and the 2x point (131,072, 2.47961):
    # (65,536 + 131,072) / 2 = 98,304 tokens, which is 1.5 times the 65,536 the baseline is served.
    loss = (2.740144847555812 + 2.4796097041712706) / 2
    eff = data_efficiency(loss, "synthetic")
    assert eff.equivalent_tokens == pytest.approx(98_304, rel=1e-12)
    assert eff.multiplier == pytest.approx(1.5, rel=1e-12) and eff.label == "1.50x"


def test_webtext_multiplier_worked_by_hand():
    # A board record's loss, 5.625612652117777, lies between 2x (194,560 tokens, 5.818407472071828) and
    # 4x (394,240, 5.2535100223906515): fraction 0.192794819954051 / 0.5648974497311765 = 0.3412915 of
    # the way, so 194,560 + 0.3412915 * 199,680 = 262,709.9 tokens = 2.64486 x 99,328.
    eff = data_efficiency(5.625612652117777, "webtext")
    fraction = 0.192794819954051 / 0.5648974497311765
    assert eff.multiplier == pytest.approx((194_560 + fraction * 199_680) / 99_328, rel=1e-9)
    assert round(eff.multiplier, 4) == 2.6449


def test_bounds_use_the_same_unit():
    # Past the synthetic table: at least 2,097,152 / 65,536 = 32x; above it: at most 1x.
    assert data_efficiency(2.0, "synthetic").bound == ">32x"
    assert data_efficiency(3.0, "synthetic").bound == "<1x"


def test_baseline_tokens_round_trip_and_is_optional(tmp_path):
    points = [(900, 4.0), (1_900, 3.0)]
    with_unit = write_reference_curve(tmp_path / "a.json", points, "t", 1_000, baseline_tokens=900)
    assert json.loads((tmp_path / "a.json").read_text())["baseline_tokens"] == 900
    assert load_reference_curve(tmp_path / "a.json") == with_unit and with_unit.denominator == 900
    assert data_efficiency(3.5, with_unit).multiplier == pytest.approx(1_400 / 900)
    plain = write_reference_curve(tmp_path / "b.json", points, "t", 1_000)
    assert "baseline_tokens" not in json.loads((tmp_path / "b.json").read_text())
    assert plain.denominator == 1_000 and data_efficiency(3.5, plain).multiplier == pytest.approx(1.4)
    # an explicit denominator still wins, as before
    assert data_efficiency(3.5, with_unit, train_tokens=700).multiplier == pytest.approx(2.0)


@pytest.mark.parametrize("value", [0, -5, 1.5, "900", True])
def test_loader_refuses_a_bad_baseline_tokens(tmp_path, value):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"track": "t", "train_tokens": 1_000, "baseline_tokens": value,
                               "points": [{"tokens": 900, "loss": 4.0}, {"tokens": 1_900, "loss": 3.0}]}))
    with pytest.raises(ReferenceCurveError, match="baseline_tokens must be a positive integer"):
        load_reference_curve(bad)


def test_downstream_curves_divide_by_the_same_unit(tmp_path):
    from harness.eval.efficiency import (DownstreamCurves, downstream_curve_path, downstream_efficiency,
                                    load_downstream_curves, write_downstream_curves)

    curves = DownstreamCurves("t", "", "", 1_000, (("piqa/acc", ((900, 0.3), (1_900, 0.5))),), baseline_tokens=900)
    write_downstream_curves(downstream_curve_path(tmp_path / "t.json"), curves)
    assert load_downstream_curves(tmp_path / "t.json") == curves
    # error 0.6 is half way between 0.7 (900 tokens) and 0.5 (1,900): 1,400 tokens = 1.556 x 900
    assert downstream_efficiency({"piqa/acc": 0.4}, curves)["piqa/acc"]["multiplier"] == pytest.approx(1_400 / 900)


def test_calibrate_needs_the_1x_run(tmp_path):
    from harness.run.calibrate import CalibrationRequest, calibrate

    with pytest.raises(SlowrunError, match=r"--factors 2,4 lacks 1: .* add it, e.g. --factors 1,2,4"):
        calibrate(CalibrationRequest(track="synthetic", factors=(4, 2), data_dir=tmp_path / "prepared",
                                     work_dir=tmp_path / "work", out=tmp_path / "c.json", progress=False))
    assert list(tmp_path.iterdir()) == []  # refused before preparing or training anything
