"""Which columns a table shows, in what order: decided from the data, so a table holds only what it can fill.

A reader of Slowrun's boards scans rank, method and loss (with its interval and n; the held-out test
loss right after the validation loss, in tables where a run was scored on one) first, then data
efficiency, the epochs or training time it took, the hardware, the date and where the number comes
from; those are the board table's columns, in that order, and everything else (bits per byte, ensemble
size, downstream scores, wall time, GPU-hours) is on the entry page. A column with nothing to show for
any row of a table (every cell would be a dash: intervals of single runs, epochs of published results)
is left out of that table, which keeps a board one line per row at 1280 px.

Each column has a key (the template's cell macro renders it), a header, a header tooltip, and a
`value` function giving the cell's value for one row, None when the cell would be empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from leaderboard.entries import Entry, run_flags
from leaderboard.rows import Row


def _nothing(_: Any) -> None:
    return None


@dataclass(frozen=True)
class Column:
    key: str  # the cell macro's name for it: board_cell / seed_cell in the templates
    header: str
    title: str = ""
    value: Callable[[Any], object] = _nothing  # a row's value; None where its cell is empty


def _shown(value: object) -> bool:
    return value is not None and value != "—" and value != ""


def present(columns: Iterable[Column], items: Iterable[Any]) -> tuple[Column, ...]:
    """The columns with a value for at least one item, in the given order."""
    items = list(items)
    return tuple(column for column in columns if any(_shown(column.value(item)) for item in items))


def _interval_half_width(entry: Entry) -> float | None:
    return entry.interval.half_width if entry.interval else None


def _efficiency(entry: Entry) -> str | None:
    return None if entry.efficiency.text == "—" else entry.efficiency.text


def _epochs(entry: Entry) -> float | None:
    return None if entry.reported else entry.epochs


def _training_time(entry: Entry) -> object:
    return entry.time_text if entry.reported else entry.train_s


def _status(entry: Entry) -> object:
    """Something to say only for an unranked entry or one with a flag; a ranked, unflagged row says nothing."""
    return True if entry.reasons or entry.flags else None


def board_columns(confidence: float) -> tuple[Column, ...]:
    """Every column a board table can have, in reading order; `present` picks a table's own."""
    level = round(confidence * 100)
    return (
        Column("rank", "Rank", "by mean validation loss among entries that may rank", lambda e: e.rank),
        Column("method", "Method", "the method; its page lists every run (seed) and the columns not shown here",
               lambda e: e.method),
        Column("val_loss", "Val loss", "mean over the entry's runs of the next-token cross-entropy on the "
                                       "validation split, nats per token", lambda e: e.mean),
        Column("test_loss", "Test loss", "the same on the maintainers' held-out test split, for runs scored on it "
                                         "(slowrun leaderboard add --verify --test-data); ⚑ where it exceeds the "
                                         "val loss by more than chance allows",
               lambda e: e.test.loss if e.test else None),
        Column("ci", f"{level}% CI", f"half-width of the {level}% Student-t confidence interval of the mean "
                                     "val loss (none for a single run)", _interval_half_width),
        Column("n", "n", "runs (seeds) in the entry", lambda e: e.n),
        Column("efficiency", "Data efficiency", "fresh training data a standard baseline needs for this loss, as a "
                                                "multiple of the track's training data; a bound where the "
                                                "reference curve ends", _efficiency),
        Column("epochs", "Epochs", "training epochs counted by the harness (mean over runs)", _epochs),
        Column("train_time", "Training time", "the harness's training clock, first real batch to the end of "
                                              "training (mean over runs); for published results, as published",
               _training_time),
        Column("hardware", "Hardware", "GPUs per node × model (nodes × GPUs × model for several nodes); "
                                       "GPU-hours on the entry page",
               lambda e: None if e.hardware_short == "—" else e.hardware_short),
        Column("date", "Date", "when the entry was complete: its newest run", lambda e: e.date),
        Column("provenance", "Provenance", "what was done to the number: measured by this harness, re-evaluated "
                                           "(snapshots scored again by a maintainer), or reported (published "
                                           "elsewhere); hover a badge for the details",
               lambda e: e.provenance_kinds),
        Column("status", "Status", "why an entry is not ranked, and what its runs went without (sandbox, graph "
                                   "evaluation, network or process isolation)", _status),
    )


def seed_columns() -> tuple[Column, ...]:
    """The columns of an entry page's table of runs, in reading order."""
    return (
        Column("seed", "Seed", "", lambda r: r.seed),
        Column("val_loss", "Val loss", "nats per token", lambda r: r.val_loss),
        Column("test_loss", "Test loss", "nats per token on the held-out test split; ⚑ where it exceeds the val loss "
                                         "by more than chance allows", lambda r: r.test.loss if r.test else None),
        Column("val_bpb", "Bits/byte", "the same loss in bits per byte of text", lambda r: r.val_bpb),
        Column("epochs", "Epochs", "training epochs counted by the harness",
               lambda r: None if r.reported else r.epochs),
        Column("train_time", "Training time", "the harness's training clock; for published results, as published",
               lambda r: r.reported.get("time_short") if r.reported else r.train_s),
        Column("wall_time", "Wall time", "the whole run, start to record", lambda r: r.wall_s),
        Column("date", "Date", "", lambda r: r.date),
        Column("provenance", "Provenance", "", lambda r: r.provenance.kind),
        Column("status", "Status", "", lambda r: True if r.status != "ok" or run_flags(r) else None),
        Column("run", "Run", "the run's own page", lambda r: r.run_id),
    )


def table_columns(entries: Iterable[Entry], confidence: float) -> tuple[Column, ...]:
    return present(board_columns(confidence), entries)


def entry_seed_columns(runs: Iterable[Row]) -> tuple[Column, ...]:
    return present(seed_columns(), runs)
