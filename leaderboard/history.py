"""The record history of one table: which entries beat the record of their day, by how much, how surely.

Entries are taken in the order they were complete (their newest run; a published table's own row order
breaks ties within a day). The first ranked entry opens the history; each later entry whose mean is
below the current record's becomes the record, and the improvement is tested with the one-sided Welch
test against the runs of the record it beats. It is called significant when p is below the board's
threshold and the improvement is at least the board's minimum margin. With one run on either side there
is nothing to test: the history says "n=1, not tested" instead of a p-value (normal on the unlimited
class, where one run can take days).

Entries of a table may differ in epoch budget, and the history takes them all: a step that beats a
record set at another budget says so (`budget_changed`), since a lower loss after more epochs is not
the same claim as a lower loss at the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from leaderboard.entries import Entry
from leaderboard.settings import BoardSettings
from leaderboard.stats import welch_one_sided

NOT_TESTED = "n=1, not tested"


@dataclass(frozen=True)
class HistoryStep:
    entry: Entry
    previous: Entry | None  # the record it beat; None for the first
    improvement: float | None  # previous mean - this mean, nats
    p_value: float | None  # None: first record, or n=1 on a side
    significant: bool | None  # None where not tested

    @property
    def budget_changed(self) -> bool:
        """Whether it beat a record set at another epoch budget: more (or fewer) epochs, not only a better method."""
        return self.previous is not None and self.previous.budget_epochs != self.entry.budget_epochs

    @property
    def verdict(self) -> str:
        if self.previous is None:
            return "first record"
        if self.p_value is None:
            return NOT_TESTED
        return "significant" if self.significant else "not significant"


def record_history(ranked: list[Entry], settings: BoardSettings) -> tuple[HistoryStep, ...]:
    steps: list[HistoryStep] = []
    current: Entry | None = None
    for entry in sorted(ranked, key=lambda e: e.order):
        if entry.mean is None:
            continue
        if current is None:
            steps.append(HistoryStep(entry, None, None, None, None))
            current = entry
            continue
        if entry.mean >= current.mean:
            continue
        improvement = current.mean - entry.mean
        test = welch_one_sided(entry.losses, current.losses)
        if test is None:
            steps.append(HistoryStep(entry, current, improvement, None, None))
        else:
            significant = test.p_value < settings.p_threshold and improvement >= settings.min_margin_nats
            steps.append(HistoryStep(entry, current, improvement, test.p_value, significant))
        current = entry
    return tuple(steps)
