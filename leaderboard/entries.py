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
from functools import cached_property

from leaderboard.collect import LoadedRecord
from leaderboard.holdout import HeldOutGap, entry_test_gap
from leaderboard.naming import slug
from leaderboard.rows import ISOLATION_GAPS, REPORTED, Efficiency, Provenance, Row, TaskProvenance, status_reason
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
class Flag:
    """A short badge the board table shows beside a run that falls short of the closed sandbox's guarantees."""

    label: str
    title: str
    css: str


UNSANDBOXED = Flag("unsandboxed", "the method's code ran without the Landlock sandbox: the harness could not stop "
                                  "it from reading or writing outside its folders", "sandbox-none")
METHOD_CODE = Flag("method code", "a snapshot was scored by running the method's own code (in the sandboxed "
                                  "worker), not from an exported graph the harness runs: its statelessness rests "
                                  "on the probes (and on a CPU, a fresh fork per batch)", "method-code")


def run_flags(row: Row) -> tuple[Flag, ...]:
    """The flags of one run; published results get none (nothing of theirs ran here)."""
    if row.provenance.kind == REPORTED:
        return ()
    flags = [UNSANDBOXED] if row.sandbox != "landlock" else []
    if row.by_method_code:
        flags.append(METHOD_CODE)
    flags += [Flag(gap, ISOLATION_GAPS[gap], "sandbox-gap") for gap in row.isolation_gaps]
    return tuple(flags)


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

    @cached_property  # several cells and badges of a page ask; the runs never change
    def provenances(self) -> tuple[Provenance, ...]:
        """One of each kind among its runs (sandboxing aside: the flags say it), by kind."""
        kinds: dict[str, Provenance] = {}
        for row in self.runs:
            kinds.setdefault(row.provenance.kind, row.provenance)
        return tuple(kinds[kind] for kind in sorted(kinds))

    @property
    def provenance_kinds(self) -> str:
        return ", ".join(p.kind for p in self.provenances)

    @property
    def by_method_code(self) -> bool:
        """Whether a snapshot of a run was scored by the method's own code rather than its exported graph."""
        return not self.reported and any(r.by_method_code for r in self.runs)

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
    def downstream_avg(self) -> float | None:
        return _mean([r.downstream_avg for r in self.runs])

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(sorted({task for r in self.runs for task in r.downstream}))

    def task_score(self, task: str, metric: str) -> float | None:
        return _mean([getattr(r.downstream[task], metric) for r in self.runs if task in r.downstream])

    @cached_property
    def downstream_provenance(self) -> tuple[tuple[str, TaskProvenance, int], ...]:
        """(task, provenance, runs) for each distinct provenance of each task among the runs, by task, then in
        the runs' order: one line per task when the seeds were scored alike. Empty when no run's record says
        anything of it (records from before downstream provenance)."""
        counts: dict[tuple[str, TaskProvenance], int] = {}
        for row in self.runs:
            for task, made in row.downstream_provenance.items():
                counts[(task, made)] = counts.get((task, made), 0) + 1
        if not any(made.known for _, made in counts):
            return ()
        return tuple((task, made, n) for (task, made), n in sorted(counts.items(), key=lambda item: item[0][0]))

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

    @property
    def hardware_short(self) -> str:
        kinds = sorted({r.hardware_short for r in self.runs})
        return kinds[0] if len(kinds) == 1 else "mixed"

    @property
    def val_bpb(self) -> float | None:
        return _mean([r.val_bpb for r in self.runs])

    @cached_property
    def test(self) -> HeldOutGap | None:
        """Test loss beside val loss over the runs scored on a held-out test split (None when none was)."""
        return entry_test_gap(r.test for r in self.runs)

    @cached_property
    def flags(self) -> tuple[Flag, ...]:
        """Every flag any of its runs carries, once, in a fixed order (unsandboxed, method code, gaps)."""
        seen: dict[str, Flag] = {}
        for row in self.runs:
            for flag in run_flags(row):
                seen.setdefault(flag.label, flag)
        order = [UNSANDBOXED.label, METHOD_CODE.label, *sorted(ISOLATION_GAPS)]
        return tuple(seen[label] for label in order if label in seen)

    @property
    def shown_reasons(self) -> tuple[str, ...]:
        """Why it is unranked, less the `status X` reason the status badge already says."""
        return tuple(reason for reason in self.reasons if reason != f"status {self.status}")

    @property
    def time_text(self) -> str | None:
        """A published result's training time as published, without its parenthesis (None for a measured entry,
        whose `train_s` the template formats)."""
        if self.reported:
            return self.first.reported.get("time_short") or None
        return None

    @property
    def time_sort(self) -> float | None:
        return self.first.reported.get("time_seconds") if self.reported else self.train_s


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
