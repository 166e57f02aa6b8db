"""Test loss beside validation loss, and when the gap between them is too large to be chance.

A record verified with `slowrun leaderboard add --verify --test-data DIR` carries a `test` section: its final
predictor scored on the maintainers' held-out test split (harness/data/holdout.py, harness/run/reverify.py),
with the standard error of that loss and of the validation loss. The board shows the test loss beside the
validation loss and flags a run whose test loss is higher than chance allows:

    gap       = test − val                          (nats/token)
    se        = sqrt(se_val² + se_test²)
    threshold = max(GAP_Z · se, MIN_GAP_NATS)        GAP_Z = 3, MIN_GAP_NATS = 0.001
    flagged when gap > threshold

Why this rule. The validation and test splits are disjoint runs of documents from the same stream, and
nothing of either was trained on. A predictor that was not fit to the validation split therefore has the
same expected loss on both, and its two losses differ only by which text each split happened to hold: the
gap is approximately normal with mean 0 and standard deviation `se` (the splits are independent, so their
variances add). `se_val` and `se_test` are the standard errors of each split's mean loss, computed over its
windows' mean losses, not over tokens: tokens of one window share a document and context and are far from
independent, so a per-token standard error would understate the noise and flag honest runs. A predictor
chosen or tuned by its validation loss (hyperparameters searched on it, snapshots or ensemble weights picked
by it, validation text leaked into training) has a validation loss that is optimistically low, which shows
as a positive gap; a negative gap is never a problem, so the test is one-sided. At GAP_Z = 3 an honest run
is flagged with probability about 0.00135. MIN_GAP_NATS is the board's smallest record margin
(BoardSettings.min_margin_nats): a gap below it is smaller than any loss difference the board calls an
improvement, so even when it is measurable it is not worth a flag (with the small tracks' splits `se`
is far above it; it matters only for very large splits).

What it cannot see. Every run on a board is scored on the same two splits, so the luck of their draw is
shared: about one pair of splits in 740 makes the test split that much harder than validation for every
predictor, and the stream itself may drift (the test split comes after training in the stream, the
validation split before it). Either shows as the same positive gap on honest runs of every method, which
the entry pages make visible; a flag on one method among unflagged others is the signal.

An entry (a method's seeds) is judged on the mean gap over its runs that have a test score, against the mean
of those runs' `se`: its runs are scored on the same splits, so their split-sampling errors are one error
seen several times, not independent ones, and averaging seeds does not shrink it (the mean of the runs'
standard errors is the bound for errors that are fully correlated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from leaderboard.settings import DEFAULT_SETTINGS

GAP_Z = 3.0
MIN_GAP_NATS = DEFAULT_SETTINGS.min_margin_nats


def gap_se(val_se: float, test_se: float) -> float:
    """The standard error of test − val for two independent splits."""
    return math.hypot(val_se, test_se)


def gap_threshold(se: float, z: float = GAP_Z, minimum: float = MIN_GAP_NATS) -> float:
    """How far test may exceed val before the gap is flagged, for a gap with standard error `se`."""
    return max(z * se, minimum)


@dataclass(frozen=True)
class HeldOutGap:
    """Test loss beside validation loss: of one run, or of the scored runs of an entry (means)."""

    loss: float  # nats/token on the test split
    val_loss: float  # the same runs' validation loss
    se: float  # standard error of the gap (the mean of the runs' for an entry)
    bpb: float | None = None
    split_hashes: tuple[str, ...] = ()
    scored: int = 1  # runs with a test score
    keyed: bool | None = None  # the split was sampled by the maintainers' secret (None: not said, older records)

    @property
    def gap(self) -> float:
        return self.loss - self.val_loss

    @property
    def threshold(self) -> float:
        return gap_threshold(self.se)

    @property
    def flagged(self) -> bool:
        return self.gap > self.threshold

    @property
    def split_short(self) -> str:
        return ", ".join(h[:12] for h in self.split_hashes)

    @property
    def split_kind(self) -> str:
        """How far the test split is held out, in words for the pages."""
        if self.keyed is None:
            return "how it was chosen is not recorded"
        return ("keyed: sampled by the maintainers' secret" if self.keyed
                else "contiguous: the next tokens of the public stream, which anyone can rebuild")

    @property
    def note(self) -> str:
        """The tooltip and the entry page's explanation."""
        measured = (f"test − val = {self.gap:+.4f} nats/token; the gap's standard error is {self.se:.4f}, so chance "
                    f"allows up to {self.threshold:.4f} ({GAP_Z:g} standard errors, at least {MIN_GAP_NATS:g} nats)")
        if self.flagged:
            return (measured + ". Flagged: the test loss is higher than chance allows, so the validation loss looks "
                    "optimistic: the predictor may have been tuned to the validation split")
        return measured + "; not flagged"


def run_test_gap(record: dict) -> HeldOutGap | None:
    """The run's test loss and gap, from its `test` section (None when it was not scored on a test split)."""
    test, result = record.get("test"), record.get("result")
    if not isinstance(test, dict) or not isinstance(result, dict) or result.get("val_loss") is None:
        return None
    return HeldOutGap(loss=float(test["loss"]), val_loss=float(result["val_loss"]),
                   se=gap_se(float(test["val_loss_se"]), float(test["loss_se"])),
                   bpb=None if test.get("bpb") is None else float(test["bpb"]),
                   split_hashes=(str(test["split_hash"]),),
                   keyed=None if test.get("selection") is None else test["selection"] == "keyed")


def entry_test_gap(gaps: Iterable[HeldOutGap | None]) -> HeldOutGap | None:
    """The entry's test loss and gap over its runs that have one (None when none has)."""
    scored = [gap for gap in gaps if gap is not None]
    if not scored:
        return None
    bpbs = [gap.bpb for gap in scored if gap.bpb is not None]
    return HeldOutGap(loss=_mean(gap.loss for gap in scored), val_loss=_mean(gap.val_loss for gap in scored),
                   se=_mean(gap.se for gap in scored), bpb=_mean(bpbs) if len(bpbs) == len(scored) else None,
                   split_hashes=tuple(sorted({h for gap in scored for h in gap.split_hashes})), scored=len(scored),
                   keyed=_common(gap.keyed for gap in scored))


def _common(values: Iterable[bool | None]) -> bool | None:
    """The one value all runs share; None when they differ or one does not say."""
    values = set(values)
    return values.pop() if len(values) == 1 else None


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values)
