"""Record-page plots: reproducible SVG, labels where the data are, no dependence on caller state."""

from __future__ import annotations

import math
import re

import matplotlib
import pytest

from leaderboard import plots
from leaderboard.plots import PlotCache, PlotSpec, Series, k_sweep_plot_spec, loss_plot_spec, render_all, render_svg
from tests.leaderboard.factory import make_record

FIG_W, FIG_H = 360.0, 216.0  # 5 x 3 inches at the 72 points per inch of SVG
AXES = (0.14, 0.17, 0.82, 0.78)  # left, bottom, width, height as fractions of the figure


def simple_spec(offset: float = 0.0) -> PlotSpec:
    return PlotSpec("loss-epochs", "loss", "epochs", "loss",
                    (Series((1.0, 2.0, 4.0), (3.5 + offset, 3.25 + offset, 3.1 + offset)),))


def labels(svg: str) -> list[tuple[float, float, str, str]]:
    """(x, y, anchor, text) of every label the plot writes as text."""
    found = re.findall(r'<text x="([-\d.]+)" y="([-\d.]+)" text-anchor="(\w+)"[^>]*>([^<]*)</text>', svg)
    return [(float(x), float(y), anchor, text) for x, y, anchor, text in found]


def test_same_spec_same_bytes_whatever_was_drawn_before():
    first = render_svg(simple_spec())
    render_svg(simple_spec(offset=1.0))
    render_svg(k_sweep_plot_spec(make_record()))
    assert render_svg(simple_spec()) == first


def test_svg_is_inline_ready_and_undated():
    svg = render_svg(simple_spec())
    assert svg.startswith('<svg class="plot" role="img" aria-label="loss"') and svg.endswith("</svg>\n")
    assert "<?xml" not in svg and "<!DOCTYPE" not in svg and "<dc:date>" not in svg


def test_user_matplotlib_settings_do_not_change_the_output():
    baseline = render_svg(simple_spec())
    with matplotlib.rc_context({"lines.linewidth": 7.0, "axes.prop_cycle": matplotlib.cycler(color=["red"]),
                                "svg.fonttype": "path", "svg.hashsalt": "other"}):
        assert render_svg(simple_spec()) == baseline
    assert matplotlib.rcParams["svg.hashsalt"] != "slowrun-loss-epochs"  # our settings did not leak out


def test_two_plots_of_one_page_share_no_svg_id():
    record = make_record()
    ids_loss = set(re.findall(r' id="([^"]+)"', render_svg(loss_plot_spec(record))))
    ids_k = set(re.findall(r' id="([^"]+)"', render_svg(k_sweep_plot_spec(record))))
    assert ids_loss and ids_k and not ids_loss & ids_k


def test_tick_labels_sit_at_their_data_positions():
    xs, ys = (1.0, 2.0, 4.0), (3.5, 3.25, 3.1)
    svg = render_svg(PlotSpec("loss-epochs", "t", "epochs", "loss", (Series(xs, ys),)))
    # independent mapping: 5 % padding around the data, then the axes rectangle in points
    x_lo, x_hi = 1.0 - 0.15, 4.0 + 0.15
    y_lo, y_hi = 3.1 - 0.02, 3.5 + 0.02
    left, bottom, width, height = AXES
    x_labels = [(x, t) for x, y, anchor, t in labels(svg) if anchor == "middle" and t[:1].isdigit()]
    y_labels = [(y, t) for x, y, anchor, t in labels(svg) if anchor == "end"]
    assert [t for _, t in x_labels] == ["1", "2", "3", "4"]
    for x, text in x_labels:
        assert x == pytest.approx((left + width * (float(text) - x_lo) / (x_hi - x_lo)) * FIG_W, abs=0.01)
    assert len(y_labels) >= 3 and all(len(t.split(".")[-1]) == len(y_labels[0][1].split(".")[-1]) for _, t in y_labels)
    for y, text in y_labels:
        expected_top = FIG_H - (bottom + height * (float(text) - y_lo) / (y_hi - y_lo)) * FIG_H
        assert y == pytest.approx(expected_top + 2.9, abs=0.01)  # baseline just below the tick, text centred


def test_k_sweep_ticks_are_integers():
    svg = render_svg(k_sweep_plot_spec(make_record()))
    x_texts = [t for x, y, anchor, t in labels(svg) if anchor == "middle" and t[:1].isdigit()]
    assert x_texts == ["1", "2", "3"]


def test_loss_plot_uses_curve_and_snapshots_and_skips_missing_values():
    record = make_record()
    record["snapshots"][0]["val_loss"] = None
    record["curve"][1]["val_loss"] = 2.0  # unsorted epochs are sorted by the spec
    record["curve"].reverse()
    spec = loss_plot_spec(record)
    curve, snaps = spec.series
    assert curve.x == (1.0, 2.0, 4.0, 8.0) and curve.line and not curve.points
    assert snaps.x == (2.0, 4.0, 8.0) and snaps.points and not snaps.line
    assert curve.y[1] == 2.0  # the point at epoch 2, found after sorting


def test_nothing_to_plot_gives_no_spec():
    record = make_record(curve=[], k_sweep=[])
    for snapshot in record["snapshots"]:
        snapshot["val_loss"] = None
    assert loss_plot_spec(record) is None and k_sweep_plot_spec(record) is None


def test_single_point_plots_render():
    spec = PlotSpec("k-sweep", "t", "K", "loss", (Series((1.0,), (3.0,), line=True, points=True),), integer_x=True)
    svg = render_svg(spec)
    assert "<path" in svg and not any(math.isnan(x) for x, *_ in labels(svg))


def test_key_changes_with_data_and_not_with_identity():
    assert simple_spec().key == simple_spec().key
    assert simple_spec().key != simple_spec(offset=0.001).key


def test_cache_is_used_and_gives_the_same_bytes(tmp_path, monkeypatch):
    specs = [simple_spec(), simple_spec(0.5), simple_spec()]
    cache = PlotCache(tmp_path / "cache")
    fresh = render_all(specs, cache=cache, workers=1)
    assert len(fresh) == 2 and len(list((tmp_path / "cache").glob("*.svg"))) == 2

    def must_not_render(batch):
        raise AssertionError("rendered although cached")

    monkeypatch.setattr(plots, "_render_batch", must_not_render)
    assert render_all(specs, cache=cache, workers=1) == fresh


def test_a_damaged_cache_entry_is_rendered_again(tmp_path):
    cache = PlotCache(tmp_path)
    spec = simple_spec()
    (tmp_path / f"{spec.key}.svg").write_text("<svg trunc")
    assert render_all([spec], cache=cache, workers=1)[spec.key] == render_svg(spec)


def test_worker_processes_give_the_same_bytes(monkeypatch):
    specs = [simple_spec(i / 10) for i in range(4)]
    monkeypatch.setattr(plots, "PARALLEL_MIN_PLOTS", 1)
    assert render_all(specs, workers=2) == render_all(specs, workers=1)
