"""Data efficiency against a reference curve, and epochs-to-match between two runs' loss curves.

A reference curve says what validation loss a standard baseline reaches with a given amount of *fresh*
training data. A run's data-efficiency multiplier is the amount of fresh data the baseline would need to
match the run's loss, divided by the data the run actually had: "12.77x" means the run got from 100M
tokens what the baseline needs 1.277B tokens for. Between table points the curve is taken as linear in
tokens; outside the table nothing is known, so the answer is a bound (">20x"), never an extrapolation.

Numerator and denominator are counted in one unit, the curve's own x axis, so that the baseline trained
once on the track's own training data scores exactly 1.00x:

- A calibrated curve (``slowrun calibrate``) measures x as the training tokens the baseline was served
  (metered): one epoch of each fresh-data set, cut into whole windows and whole batches (the baseline
  declares no fitness carve). Its ``baseline_tokens`` is that count for 1x, the track's own training
  data (65,536 on ``synthetic``; 99,328 on ``webtext``, not the 100,000 of ``train_tokens``), and it is
  the denominator.
- A curve without ``baseline_tokens`` (the published fineweb table, whose x is the tokens the nanochat
  baseline trained on and whose 1x is Slowrun's official 100M) divides by ``train_tokens``.

Dividing by ``train_tokens`` where x counts served tokens would score the calibration baseline itself
below 1x (0.99x on ``webtext``; 0.92x on ``synthetic`` while the track's fitness carve was taken from
every method).

Curves are data files (``harness/eval/reference_curves/<name>.json``) so that tracks without a published
table can get one from ``slowrun calibrate`` and users can add their own.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.common.atomic import write_text_atomic
from harness.errors import SlowrunError

CURVES_DIR = Path(__file__).resolve().parent / "reference_curves"

BELOW_TABLE = "below-table"  # loss lower than the table's best: at least the table's largest multiplier
ABOVE_TABLE = "above-table"  # loss higher than the table's worst: at most the table's smallest multiplier


class ReferenceCurveError(SlowrunError):
    """A reference curve file is missing, malformed or not a curve (loss must fall as tokens grow)."""


@dataclass(frozen=True)
class ReferenceCurve:
    track: str
    description: str
    source: str
    points: tuple[tuple[int, float], ...]  # (fresh training tokens, val loss in nats/token), as stored
    train_tokens: int  # the track's training-set size (its `train_tokens`)
    baseline_tokens: int | None = None  # the curve's x at 1x: what the baseline is served from the track's data

    @property
    def denominator(self) -> int:
        """The multiplier's unit: the curve's x for the track's own training data (see the module docstring)."""
        return self.train_tokens if self.baseline_tokens is None else self.baseline_tokens

    def envelope(self) -> tuple[tuple[int, float], ...]:
        return lower_envelope(self.points)

    def to_dict(self) -> dict:
        return {
            "track": self.track,
            "description": self.description,
            "source": self.source,
            "train_tokens": self.train_tokens,
            **_baseline_field(self.baseline_tokens),
            "points": [{"tokens": t, "loss": loss} for t, loss in self.points],
        }


@dataclass(frozen=True)
class Efficiency:
    """A multiplier inside the table, or a bound with a flag outside it (exactly one of the two is set)."""

    multiplier: float | None
    bound: str | None
    flag: str | None
    equivalent_tokens: float | None = None

    @property
    def label(self) -> str:
        return f"{self.multiplier:.2f}x" if self.multiplier is not None else str(self.bound)


def lower_envelope(points: Sequence[tuple[float, float]]) -> tuple[tuple[int, float], ...]:
    """The best loss reachable with at most t tokens: points that beat every point with fewer (or equal) tokens.

    More data can always be ignored, so a point that is no better than one with less data says nothing
    about the baseline's efficiency. What remains has tokens strictly increasing and loss strictly falling.
    """
    kept: list[tuple[int, float]] = []
    for tokens, loss in sorted(((int(t), float(v)) for t, v in points), key=lambda p: (p[0], p[1])):
        # Sorting by (tokens, loss) puts the best of equal-size points first; the rest cannot beat it.
        if not kept or loss < kept[-1][1]:
            kept.append((tokens, loss))
    return tuple(kept)


def _ratio_text(value: float) -> str:
    return f"{value:.3g}x"


def data_efficiency(loss: float, curve, train_tokens: int | None = None) -> Efficiency:
    """Multiplier for a validation loss (nats/token) against a reference curve (object, name or path).

    The equivalent token count is found by linear interpolation in tokens between the two envelope points
    whose losses bracket ``loss``; the multiplier divides it by ``train_tokens`` when given, else by the
    curve's ``denominator`` (its ``baseline_tokens``, or its ``train_tokens`` when it has none).
    """
    ref = curve if isinstance(curve, ReferenceCurve) else load_reference_curve(curve)
    denominator = ref.denominator if train_tokens is None else train_tokens
    if not isinstance(denominator, int) or denominator <= 0:
        raise SlowrunError(f"train_tokens must be a positive integer, got {denominator!r}")
    loss = float(loss)
    if not math.isfinite(loss):
        raise SlowrunError(f"cannot place a non-finite loss ({loss}) on a reference curve")
    points = ref.envelope()
    tokens = np.array([t for t, _ in points], dtype=np.float64)
    losses = np.array([v for _, v in points], dtype=np.float64)
    if loss < losses[-1]:
        return Efficiency(None, ">" + _ratio_text(tokens[-1] / denominator), BELOW_TABLE)
    if loss > losses[0]:
        return Efficiency(None, "<" + _ratio_text(tokens[0] / denominator), ABOVE_TABLE)
    # Losses fall strictly along the envelope, so reversed they rise and np.interp can invert the curve.
    equivalent = float(np.interp(loss, losses[::-1], tokens[::-1]))
    return Efficiency(multiplier=equivalent / denominator, bound=None, flag=None, equivalent_tokens=equivalent)


def _curve_xy(curve, what: str) -> list[tuple[float, float]]:
    """(epochs, loss) pairs from pairs/tuples or from objects with ``epochs`` and ``val_nll``, epoch-ordered."""
    pairs = []
    for point in curve:
        if hasattr(point, "epochs") and hasattr(point, "val_nll"):
            x, y = point.epochs, point.val_nll
        else:
            x, y = point[0], point[1]
        x, y = float(x), float(y)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise SlowrunError(f"{what} has a non-finite point ({x}, {y})")
        pairs.append((x, y))
    if not pairs:
        raise SlowrunError(f"{what} has no points")
    return sorted(pairs, key=lambda p: p[0])


def epochs_to_match(curve_a, curve_b) -> float | None:
    """Epochs at which curve a first reaches curve b's final loss, or None if it never does.

    Curves are sequences of (epochs, loss) points (or ``CurvePoint``s). Between consecutive points of
    curve a the loss is taken as linear in epochs; before a's first point nothing is assumed.
    """
    a = _curve_xy(curve_a, "curve a")
    target = _curve_xy(curve_b, "curve b")[-1][1]
    if a[0][1] <= target:
        return a[0][0]
    for (x0, y0), (x1, y1) in zip(a, a[1:]):
        if y1 <= target:
            return x0 + (y0 - target) / (y0 - y1) * (x1 - x0)
    return None


def epochs_ratio(curve_a, curve_b) -> float | None:
    """How many times fewer epochs run a needs to reach run b's final loss: b's final epochs / epochs_to_match."""
    matched = epochs_to_match(curve_a, curve_b)
    if matched is None:
        return None
    final_epochs = _curve_xy(curve_b, "curve b")[-1][0]
    return math.inf if matched == 0 else final_epochs / matched


def _check_points(raw, where: str, strict: bool) -> tuple[tuple[int, float], ...]:
    if not isinstance(raw, (list, tuple)) or len(raw) < 2:
        raise ReferenceCurveError(f"{where}: a curve needs a list of at least 2 points (tokens, loss)")
    points = []
    for index, item in enumerate(raw):
        if isinstance(item, dict):
            if set(item) != {"tokens", "loss"}:
                raise ReferenceCurveError(f"{where}: point {index} must have exactly the keys 'tokens' and 'loss'")
            tokens, loss = item["tokens"], item["loss"]
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            tokens, loss = item
        else:
            raise ReferenceCurveError(f"{where}: point {index} must be {{'tokens': T, 'loss': L}} or (T, L)")
        if isinstance(tokens, bool) or not isinstance(tokens, (int, float, np.integer, np.floating)):
            raise ReferenceCurveError(f"{where}: point {index} tokens must be a number, got {tokens!r}")
        if not (math.isfinite(tokens) and tokens > 0 and float(tokens).is_integer()):
            raise ReferenceCurveError(f"{where}: point {index} tokens must be a positive whole number, got {tokens!r}")
        if isinstance(loss, bool) or not isinstance(loss, (int, float, np.integer, np.floating)):
            raise ReferenceCurveError(f"{where}: point {index} loss must be a number, got {loss!r}")
        if not (math.isfinite(loss) and loss > 0):
            raise ReferenceCurveError(f"{where}: point {index} loss must be a positive finite number, got {loss!r}")
        points.append((int(tokens), float(loss)))
    if strict:
        for index in range(1, len(points)):
            (t0, l0), (t1, l1) = points[index - 1], points[index]
            if t1 <= t0:
                raise ReferenceCurveError(
                    f"{where}: tokens must strictly increase from point to point, but point {index} has "
                    f"{t1} after {t0}"
                )
            if l1 >= l0:
                raise ReferenceCurveError(
                    f"{where}: loss must fall as fresh tokens grow, but point {index} ({t1} tokens, loss "
                    f"{l1}) is not below point {index - 1} ({t0} tokens, loss {l0}); train the baseline "
                    "longer or write harness.eval.efficiency.lower_envelope(points) instead"
                )
    elif len(lower_envelope(points)) < 2:
        raise ReferenceCurveError(
            f"{where}: loss never falls as tokens grow, so the curve cannot map a loss to a token count"
        )
    return tuple(points)


def _check_train_tokens(value, where: str, name: str = "train_tokens") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ReferenceCurveError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _check_baseline_tokens(value, where: str) -> int | None:
    """`baseline_tokens` is optional (None: divide by train_tokens); when present, a positive integer."""
    return None if value is None else _check_train_tokens(value, where, "baseline_tokens")


def _baseline_field(baseline_tokens: int | None) -> dict:
    """The `baseline_tokens` entry of a curve file, left out when unset so older curves round-trip as they were."""
    return {} if baseline_tokens is None else {"baseline_tokens": baseline_tokens}


def curve_path(name_or_path: str | os.PathLike) -> Path:
    """A built-in curve by name (``fineweb``) or any JSON file by path."""
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".json") or os.sep in text or "/" in text:
        return Path(text)
    return CURVES_DIR / f"{text}.json"


def load_reference_curve(name_or_path: str | os.PathLike) -> ReferenceCurve:
    path = curve_path(name_or_path)
    if not path.is_file():
        known = sorted(p.stem for p in CURVES_DIR.glob("*.json"))
        raise ReferenceCurveError(
            f"reference curve {os.fspath(name_or_path)!r} not found at {path}; built-in curves: "
            f"{', '.join(known) or 'none'}; small tracks get theirs from `slowrun calibrate`"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReferenceCurveError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(raw, dict):
        raise ReferenceCurveError(f"{path}: expected a JSON object with track, train_tokens and points")
    missing = [key for key in ("track", "train_tokens", "points") if key not in raw]
    if missing:
        raise ReferenceCurveError(f"{path}: missing field(s) {', '.join(missing)}")
    for key in ("track", "description", "source"):
        if not isinstance(raw.get(key, ""), str):
            raise ReferenceCurveError(f"{path}: {key} must be a string")
    return ReferenceCurve(
        track=raw["track"],
        description=raw.get("description", ""),
        source=raw.get("source", ""),
        points=_check_points(raw["points"], str(path), strict=False),
        train_tokens=_check_train_tokens(raw["train_tokens"], str(path)),
        baseline_tokens=_check_baseline_tokens(raw.get("baseline_tokens"), str(path)),
    )


def write_reference_curve(
    path: str | os.PathLike,
    points: Sequence,
    track: str,
    train_tokens: int,
    *,
    description: str = "",
    source: str = "",
    baseline_tokens: int | None = None,
) -> ReferenceCurve:
    """Validate and write a curve atomically. Points must have strictly increasing tokens and falling loss.

    ``baseline_tokens`` is the curve's x for the track's own training data (the multiplier's denominator);
    leave it None only where x is counted in the track's ``train_tokens`` units, as the fineweb table is.
    """
    target = Path(path)
    where = f"reference curve for {target}"
    if not isinstance(track, str) or not track:
        raise ReferenceCurveError(f"{where}: track must be a non-empty string")
    curve = ReferenceCurve(
        track=track,
        description=str(description),
        source=str(source),
        points=_check_points(list(points), where, strict=True),
        train_tokens=_check_train_tokens(train_tokens, where),
        baseline_tokens=_check_baseline_tokens(baseline_tokens, where),
    )
    write_text_atomic(target, json.dumps(curve.to_dict(), indent=2) + "\n")
    return curve


# ---- downstream metrics -------------------------------------------------------------------------------
# A downstream reference curve maps fresh training tokens to a score (accuracy: higher is better). It is
# stored beside the loss curve as `<name>.downstream.json`; the multiplier reuses the loss machinery on
# the error rate 1 - score, which falls as data grows exactly as a loss does.

@dataclass(frozen=True)
class DownstreamCurves:
    track: str
    description: str
    source: str
    train_tokens: int
    metrics: tuple[tuple[str, tuple[tuple[int, float], ...]], ...]  # (metric, ((tokens, score), ...))
    stderrs: tuple[tuple[str, tuple[float | None, ...]], ...] = ()  # (metric, standard error of each score)
    baseline_tokens: int | None = None  # the multiplier's unit, as on the loss curve (module docstring)

    def curve(self, metric: str) -> ReferenceCurve | None:
        """The metric's curve as a reference curve over error rates, or None when it has no usable curve:
        an unknown metric, a score that never improved with more data, or one whose whole improvement is
        within two standard errors of its scores (noise would then be read as data efficiency)."""
        points = dict(self.metrics).get(metric)
        if points is None:
            return None
        errors = tuple((t, 1.0 - s) for t, s in points if 0.0 <= s < 1.0)
        envelope = lower_envelope(errors)
        if len(envelope) < 2:
            return None
        spread = {t: se for (t, _), se in zip(points, dict(self.stderrs).get(metric, ())) if se is not None}
        (first_t, first_err), (last_t, last_err) = envelope[0], envelope[-1]
        noise = max(spread.get(first_t, 0.0), spread.get(last_t, 0.0))
        if first_err - last_err <= 2.0 * noise:
            return None
        return ReferenceCurve(self.track, self.description, self.source, errors, self.train_tokens,
                              self.baseline_tokens)

    def to_dict(self) -> dict:
        errs = dict(self.stderrs)
        return {"track": self.track, "description": self.description, "source": self.source,
                "train_tokens": self.train_tokens, **_baseline_field(self.baseline_tokens),
                "metrics": {m: [{"tokens": t, "score": s, **({"stderr": errs[m][i]} if m in errs else {})}
                                for i, (t, s) in enumerate(pts)] for m, pts in self.metrics}}


def downstream_curve_path(name_or_path: str | os.PathLike) -> Path:
    path = curve_path(name_or_path)
    return path.with_name(f"{path.stem}.downstream.json")


def load_downstream_curves(name_or_path: str | os.PathLike) -> DownstreamCurves | None:
    """The downstream curves that go with a loss curve, or None when the track has none."""
    path = downstream_curve_path(name_or_path)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        metrics = tuple((str(m), tuple((int(p["tokens"]), float(p["score"])) for p in pts))
                        for m, pts in sorted(raw["metrics"].items()))
        stderrs = tuple((str(m), tuple(None if p.get("stderr") is None else float(p["stderr"]) for p in pts))
                        for m, pts in sorted(raw["metrics"].items()) if any("stderr" in p for p in pts))
        return DownstreamCurves(str(raw["track"]), str(raw.get("description", "")), str(raw.get("source", "")),
                                _check_train_tokens(raw["train_tokens"], str(path)), metrics, stderrs,
                                _check_baseline_tokens(raw.get("baseline_tokens"), str(path)))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ReferenceCurveError(f"{path}: not a downstream curve file ({exc}); expected track, train_tokens "
                                  "and metrics {name: [{tokens, score}, ...]}") from exc


def write_downstream_curves(path: str | os.PathLike, curves: DownstreamCurves) -> Path:
    return write_text_atomic(path, json.dumps(curves.to_dict(), indent=2) + "\n")


def downstream_metric_values(scores: dict, average: dict | None = None) -> dict[str, float]:
    """Flat `task/metric` (and `average/metric`) values from a record's downstream table."""
    values = {f"{task}/{metric}": float(row[metric]) for task, row in scores.items()
              for metric in ("acc", "acc_norm") if metric in row}
    for metric, value in (average or {}).items():
        values[f"average/{metric}"] = float(value)
    return values


def downstream_metric_stderrs(scores: dict) -> dict[str, float | None]:
    """Standard errors beside `downstream_metric_values`: per task as lm-eval reports them, and for the
    unweighted average over tasks sqrt(sum se^2) / tasks (the tasks' documents are independent)."""
    out: dict[str, float | None] = {}
    for metric in ("acc", "acc_norm"):
        ses = []
        for task, row in scores.items():
            se = row.get(f"{metric}_stderr")
            out[f"{task}/{metric}"] = None if se is None else float(se)
            ses.append(se)
        if scores:
            out[f"average/{metric}"] = (None if any(se is None for se in ses)
                                        else math.sqrt(sum(float(se) ** 2 for se in ses)) / len(ses))
    return out


def downstream_efficiency(values: dict[str, float], curves: DownstreamCurves) -> dict[str, dict]:
    """Data efficiency per downstream metric that has a usable reference curve (others are left out)."""
    out = {}
    for metric, score in sorted(values.items()):
        curve = curves.curve(metric)
        if curve is None or not math.isfinite(score):
            continue
        eff = data_efficiency(1.0 - score, curve)
        out[metric] = {"score": score, "multiplier": eff.multiplier, "bound": eff.bound, "flag": eff.flag}
    return out
