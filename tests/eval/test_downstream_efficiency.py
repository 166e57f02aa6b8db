"""Data efficiency of downstream scores: accuracy curves read as error-rate curves, bounds outside them."""

from __future__ import annotations

import pytest

from harness.eval.efficiency import (BELOW_TABLE, DownstreamCurves, downstream_curve_path, downstream_efficiency,
                                downstream_metric_values, load_downstream_curves, write_downstream_curves)
from harness.run.record import _downstream_efficiency

CURVES = DownstreamCurves(
    track="t", description="", source="", train_tokens=100,
    metrics=(("piqa/acc", ((100, 0.30), (200, 0.40), (400, 0.50))),
             ("sciq/acc", ((100, 0.30), (200, 0.29), (400, 0.28)))))  # never improves: no curve


def test_score_between_points_interpolates_in_tokens():
    # error 0.55 lies halfway between 0.6 (200 tokens) and 0.5 (400 tokens): 300 tokens, 3x of 100
    out = downstream_efficiency({"piqa/acc": 0.45}, CURVES)
    assert out["piqa/acc"]["multiplier"] == pytest.approx(3.0)
    assert out["piqa/acc"]["bound"] is None


def test_score_past_the_table_is_a_bound_and_flat_metrics_have_no_curve():
    out = downstream_efficiency({"piqa/acc": 0.6, "sciq/acc": 0.5, "arc_easy/acc": 0.3}, CURVES)
    assert out["piqa/acc"]["multiplier"] is None
    assert out["piqa/acc"]["bound"] == ">4x" and out["piqa/acc"]["flag"] == BELOW_TABLE
    assert set(out) == {"piqa/acc"}  # sciq never improved with data; arc_easy has no curve at all


def test_curves_round_trip_beside_the_loss_curve(tmp_path):
    loss_curve = tmp_path / "t.json"
    path = write_downstream_curves(downstream_curve_path(loss_curve), CURVES)
    assert path.name == "t.downstream.json"
    assert load_downstream_curves(loss_curve) == CURVES
    assert load_downstream_curves(tmp_path / "other.json") is None


def test_record_gets_efficiency_for_tasks_and_average(tmp_path):
    curves = DownstreamCurves("t", "", "", 100, (("average/acc_norm", ((100, 0.3), (300, 0.5))),))
    write_downstream_curves(downstream_curve_path(tmp_path / "t.json"), curves)
    record = {"downstream": {"piqa": {"acc": 0.5, "acc_norm": 0.5}, "sciq": {"acc": 0.3, "acc_norm": 0.3}},
              "downstream_average": {"acc": 0.4, "acc_norm": 0.4}}
    assert downstream_metric_values(record["downstream"], record["downstream_average"]) == {
        "piqa/acc": 0.5, "piqa/acc_norm": 0.5, "sciq/acc": 0.3, "sciq/acc_norm": 0.3,
        "average/acc": 0.4, "average/acc_norm": 0.4}
    out = _downstream_efficiency(record, str(tmp_path / "t.json"))
    assert list(out) == ["average/acc_norm"]
    assert out["average/acc_norm"]["multiplier"] == pytest.approx(2.0)  # error 0.6: halfway, 200 tokens


def test_an_improvement_within_two_standard_errors_gets_no_curve():
    points = ((100, 0.50), (200, 0.51), (400, 0.515))
    noisy = DownstreamCurves("t", "", "", 100, (("piqa/acc", points),), (("piqa/acc", (0.01, 0.01, 0.01)),))
    assert noisy.curve("piqa/acc") is None  # 0.015 better with 4x the data, against a 0.02 noise band
    clear = DownstreamCurves("t", "", "", 100, (("piqa/acc", points),), (("piqa/acc", (0.005, 0.005, 0.005)),))
    assert clear.curve("piqa/acc") is not None


def test_standard_error_of_the_task_average():
    from harness.eval.efficiency import downstream_metric_stderrs

    scores = {"a": {"acc": 0.5, "acc_stderr": 0.03, "acc_norm": 0.5, "acc_norm_stderr": None},
              "b": {"acc": 0.3, "acc_stderr": 0.04, "acc_norm": 0.3, "acc_norm_stderr": 0.01}}
    ses = downstream_metric_stderrs(scores)
    assert ses["average/acc"] == pytest.approx(0.05 / 2)  # sqrt(0.03^2 + 0.04^2) / 2 tasks
    assert ses["average/acc_norm"] is None and ses["b/acc_norm"] == 0.01
