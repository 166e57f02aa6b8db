"""Board tables: which entries are compared with which, in what order, and each table's record history.

A table holds one track on one prepared data set (its data hash) in one compute class: a different hash
means different tokens, and a different class different rules, so neither is ever ranked together.
Published results (kind `reported`) have tables of their own. Within a table, entries that may rank are
ordered by their mean validation loss (equal means share a rank); every other entry is listed below,
unranked, with its reason, so failures and over-cap runs stay visible without competing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from leaderboard.collect import LoadedRecord
from leaderboard.columns import Column, table_columns
from leaderboard.entries import Entry, group_entries
from leaderboard.history import HistoryStep, record_history
from leaderboard.naming import hash_prefix, slug
from leaderboard.rows import (REPORTED, Efficiency, Provenance, Row, TaskScore, downstream_of,  # noqa: F401
                              efficiency_of, make_row, sandbox_kind)
from leaderboard.settings import DEFAULT_SETTINGS, BoardSettings

CLASS_ORDER = ("tiny", "limited", "two-hour", "unlimited", "cpu")
CLASS_CAPS = {"tiny": "15 min", "limited": "60 min", "two-hour": "120 min", "unlimited": "no time cap"}


@dataclass(frozen=True)
class TrackTable:
    track: str
    data_hash: str
    compute_class: str
    ranked: tuple[Entry, ...]
    unranked: tuple[Entry, ...]
    tasks: tuple[str, ...]  # downstream tasks any row reports, sorted
    history: tuple[HistoryStep, ...] = ()
    reported: bool = False
    columns: tuple[Column, ...] = ()  # the board table's columns: those with something to show (leaderboard.columns)

    @property
    def hash_prefix(self) -> str:
        return hash_prefix(self.data_hash)

    @property
    def data_label(self) -> str:
        return "published results" if self.reported else f"data {self.hash_prefix}"

    @property
    def cap(self) -> str | None:
        return CLASS_CAPS.get(self.compute_class)

    @property
    def anchor(self) -> str:
        """Page anchor of the table: readable, and distinct even for names that slug alike."""
        digest = hashlib.sha256(f"{self.track}\0{self.data_hash}\0{self.compute_class}".encode()).hexdigest()[:8]
        return f"track-{slug(self.track)}-{slug(self.compute_class)}-{digest}"

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self.ranked + self.unranked

    @property
    def has_method_code(self) -> bool:
        """Whether an entry was scored by the method's own code (the board then offers to hide them)."""
        return any(entry.by_method_code for entry in self.entries)

    @property
    def rows(self) -> tuple[Row, ...]:
        """Every run of the table, ranked entries first, each entry's runs together."""
        return tuple(row for entry in self.entries for row in entry.runs)

    def rank_of(self, row: Row) -> int | None:
        for entry in self.ranked:
            if any(r.relpath == row.relpath for r in entry.runs):
                return entry.rank
        return None


def _class_position(name: str) -> tuple[int, str]:
    return (CLASS_ORDER.index(name) if name in CLASS_ORDER else len(CLASS_ORDER), name)


def _ranked_in_order(entries: list[Entry]) -> tuple[Entry, ...]:
    ordered = sorted(entries, key=lambda e: (e.mean, e.order))
    ranked: list[Entry] = []
    for position, entry in enumerate(ordered):
        tied = ranked and ordered[position - 1].mean == entry.mean
        ranked.append(_with_rank(entry, ranked[-1].rank if tied else position + 1))
    return tuple(ranked)


def _with_rank(entry: Entry, rank: int) -> Entry:
    from dataclasses import replace

    return replace(entry, rank=rank)


def build_tables(records: list[LoadedRecord], pages: dict[str, str],
                 settings: BoardSettings = DEFAULT_SETTINGS) -> list[TrackTable]:
    """One table per (track, data hash, compute class), measured before published, classes in cap order."""
    groups: dict[tuple, list[tuple[LoadedRecord, Row]]] = {}
    for loaded in records:
        row = make_row(loaded, pages[loaded.relpath])
        record = loaded.record
        key = (record["track"]["name"], row.provenance.kind == REPORTED, record["track"]["data_hash"],
               _class_position(record["compute"]["class"]))
        groups.setdefault(key, []).append((loaded, row))

    tables = []
    for (track, reported, data_hash, (_, compute_class)), members in sorted(groups.items()):
        entries = group_entries(members, settings)
        ranked = _ranked_in_order([e for e in entries if not e.reasons])
        unranked = tuple(sorted((e for e in entries if e.reasons), key=lambda e: (e.status, e.order)))
        tasks = sorted({task for _, row in members for task in row.downstream})
        tables.append(TrackTable(track, data_hash, compute_class, ranked, unranked, tuple(tasks),
                                 record_history(list(ranked), settings), reported,
                                 table_columns(ranked + unranked, settings.confidence)))
    return tables
