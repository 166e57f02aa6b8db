"""Entries: the runs of one method, configuration, track, data, compute class and budget, taken together.

A single run of a noisy training recipe is not a result; its seeds are. Runs that may rank (status ok,
a result, no unranked reasons) are grouped by everything that makes them the same experiment, and the
entry's mean and Student-t interval are what the board ranks and shows. A run that may not rank stays
visible as an entry of its own, with the reason. Published results (kind `reported`) are never grouped
with measured runs.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from leaderboard.collect import LoadedRecord
from leaderboard.naming import slug
from leaderboard.rows import REPORTED, Efficiency, Row, status_reason
from leaderboard.settings import BoardSettings
from leaderboard.stats import Interval, mean_interval


def configuration_digest(hparams: dict) -> str:
    """Same hyperparameters, same digest, whatever the key order."""
    return hashlib.sha256(json.dumps(hparams, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def entry_key(record: dict, provenance_kind: str) -> tuple:
    return (record["track"]["name"], record["track"]["data_hash"], record["compute"]["class"],
            record["method"]["hash"], configuration_digest(record["hparams"]), float(record["budget_epochs"]),
            provenance_kind == REPORTED)


@dataclass(frozen=True)
class Entry:
    key_digest: str
    page: str  # stem of the entry's page under e/
    method: str
    method_hash: str
    budget_epochs: float
    runs: tuple[Row, ...]  # by seed, then creation
    interval: Interval | None  # of the runs' val losses; None when no run has a loss
    reasons: tuple[str, ...]  # why the entry is not ranked; empty when it is
    rank: int | None = None

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def first(self) -> Row:
        return self.runs[0]

    @property
    def losses(self) -> tuple[float, ...]:
        return tuple(r.val_loss for r in self.runs if r.val_loss is not None)

    @property
    def mean(self) -> float | None:
        return self.interval.mean if self.interval else None

    @property
    def created(self) -> str:
        """When the entry was complete: its newest run."""
        return max(r.created for r in self.runs)

    @property
    def date(self) -> str:
        return self.created[:10]

    @property
    def order(self) -> tuple:
        return (self.created, max(r.sequence for r in self.runs), self.key_digest)

    @property
    def reported(self) -> bool:
        return self.first.provenance.kind == REPORTED

    @property
    def status(self) -> str:
        statuses = sorted({r.status for r in self.runs})
        return statuses[0] if len(statuses) == 1 else "mixed"

    @property
    def provenance_texts(self) -> tuple[str, ...]:
        return tuple(sorted({r.provenance.text for r in self.runs}))

    @property
    def unsandboxed(self) -> bool:
        return any(r.sandbox != "landlock" for r in self.runs) and not self.reported

    @property
    def by_method_code(self) -> bool:
        """Whether a snapshot of a run was scored by the method's own code rather than its exported graph."""
        return not self.reported and any(r.by_method_code for r in self.runs)

    @property
    def isolation_gaps(self) -> tuple[str, ...]:
        """The closed sandbox's guarantees any of its runs went without (leaderboard.rows.ISOLATION_GAPS)."""
        if self.reported:
            return ()
        return tuple(sorted({gap for r in self.runs for gap in r.isolation_gaps}))

    @property
    def efficiency(self) -> Efficiency:
        """One run's own value; over seeds the mean multiplier, or the first bound when a run has one."""
        if self.n == 1:
            return self.first.efficiency
        bounds = [r.efficiency for r in self.runs if r.efficiency.multiplier is None]
        if bounds:
            return bounds[0]
        value = _mean([r.efficiency.multiplier for r in self.runs])
        return Efficiency(f"{value:.2f}×", value, None, value)

    @property
    def epochs(self) -> float | None:
        return _mean([r.epochs for r in self.runs])

    @property
    def ensemble_text(self) -> str:
        sizes = sorted({r.ensemble_size for r in self.runs if r.ensemble_size})
        if not sizes:
            return "—"
        return str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"

    @property
    def ensemble_sort(self) -> int | None:
        sizes = [r.ensemble_size for r in self.runs if r.ensemble_size]
        return max(sizes) if sizes else None

    @property
    def downstream_avg(self) -> float | None:
        return _mean([r.downstream_avg for r in self.runs])

    def task_score(self, task: str, metric: str) -> float | None:
        return _mean([getattr(r.downstream[task], metric) for r in self.runs if task in r.downstream])

    @property
    def train_s(self) -> float | None:
        return _mean([r.train_s for r in self.runs])

    @property
    def wall_s(self) -> float | None:
        return _mean([r.wall_s for r in self.runs])

    @property
    def hardware(self) -> str:
        kinds = sorted({r.hardware for r in self.runs})
        return kinds[0] if len(kinds) == 1 else "mixed: " + "; ".join(kinds)


def _mean(values) -> float | None:
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    return math.fsum(kept) / len(kept) if kept else None


def _digest(parts: tuple) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:10]


def group_entries(loaded: list[tuple[LoadedRecord, Row]], settings: BoardSettings) -> list[Entry]:
    """Rankable runs grouped by `entry_key`; every other run an entry of its own. Unordered, unranked."""
    groups: dict[tuple, list[Row]] = {}
    singles: list[tuple[tuple, Row, tuple[str, ...]]] = []
    for item, row in loaded:
        key = entry_key(item.record, row.provenance.kind)
        if row.rankable:
            groups.setdefault(key, []).append(row)
        else:
            reason = status_reason(item.record)
            singles.append((key + (row.relpath,), row, ((reason,) if reason else ()) + row.unranked_reasons))
    entries = []
    for key, rows in groups.items():
        entries.append(_entry(key, tuple(sorted(rows, key=lambda r: (r.seed, r.created, r.relpath))), (), settings))
    for key, row, reasons in singles:
        entries.append(_entry(key, (row,), reasons, settings))
    return entries


def _entry(key: tuple, rows: tuple[Row, ...], reasons: tuple[str, ...], settings: BoardSettings) -> Entry:
    digest = _digest(key)
    losses = [r.val_loss for r in rows if r.val_loss is not None]
    first = rows[0]
    return Entry(
        key_digest=digest,
        page=f"{slug(first.method, limit=60)}-{digest}",
        method=first.method,
        method_hash=key[3],
        budget_epochs=key[5],
        runs=rows,
        interval=mean_interval(losses, settings.confidence) if losses else None,
        reasons=reasons,
    )
