"""Per-track rankings: which records are compared with which, and in what order.

Two records are only ranked together when they ran on the same track name *and* the same data hash:
a different hash means different tokens, so their losses are not comparable. Within a table, records
with status `ok` are ranked by validation loss (ties share a rank); every other status is listed below,
unranked, so failures stay visible without competing.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

from harness.records import parse_created
from leaderboard.collect import LoadedRecord
from leaderboard.naming import hash_prefix, slug

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class TaskScore:
    acc: float | None
    acc_norm: float | None


@dataclass(frozen=True)
class Efficiency:
    """Data efficiency as shown: a multiplier, or a bound string when the curve cannot tell, plus a flag."""

    text: str
    sort_value: float | None
    note: str | None
    multiplier: float | None = None


@dataclass(frozen=True)
class Row:
    rank: int | None
    relpath: str
    page: str  # stem of the record's page and JSON copy under r/
    run_id: str
    method: str
    status: str
    val_loss: float | None
    val_bpb: float | None
    efficiency: Efficiency
    epochs: float
    ensemble_size: int | None
    downstream_avg: float | None
    downstream: dict[str, TaskScore] = field(default_factory=dict)
    compute_class: str = ""
    created: str = ""  # normalised UTC stamp, sorts as text
    date: str = ""
    sandbox: str = "none"  # the sandbox the method ran in; records from before the sandbox carry none


@dataclass(frozen=True)
class TrackTable:
    track: str
    data_hash: str
    ranked: tuple[Row, ...]
    unranked: tuple[Row, ...]
    tasks: tuple[str, ...]  # downstream tasks any row reports, sorted

    @property
    def hash_prefix(self) -> str:
        return hash_prefix(self.data_hash)

    @property
    def anchor(self) -> str:
        """Page anchor of the table: readable, and distinct even for names that slug alike."""
        digest = hashlib.sha256(f"{self.track}\0{self.data_hash}".encode()).hexdigest()[:8]
        return f"track-{slug(self.track)}-{digest}"

    @property
    def rows(self) -> tuple[Row, ...]:
        return self.ranked + self.unranked


def efficiency_of(result: dict | None) -> Efficiency:
    if not result:
        return Efficiency("—", None, None)
    efficiency = result["data_efficiency"]
    multiplier, bound, flag = efficiency["multiplier"], efficiency["bound"], efficiency["flag"]
    if multiplier is not None:
        return Efficiency(f"{multiplier:.2f}×", float(multiplier), flag, float(multiplier))
    if bound:
        match = _NUMBER.search(bound)
        return Efficiency(bound, float(match.group()) if match else None, flag or "bound")
    return Efficiency("—", None, flag)


def downstream_of(record: dict) -> tuple[dict[str, TaskScore], float | None]:
    scores = {task: TaskScore(s["acc"], s["acc_norm"]) for task, s in sorted((record["downstream"] or {}).items())}
    accs = [s.acc for s in scores.values() if s.acc is not None]
    return scores, (math.fsum(accs) / len(accs) if accs else None)


def make_row(loaded: LoadedRecord, page: str, rank: int | None) -> Row:
    record = loaded.record
    result = record["result"]
    created = parse_created(record["created"])
    scores, average = downstream_of(record)
    return Row(
        rank=rank,
        relpath=loaded.relpath,
        page=page,
        run_id=record["run_id"],
        method=record["method"]["name"],
        status=record["status"],
        val_loss=result["val_loss"] if result else None,
        val_bpb=result["val_bpb"] if result else None,
        efficiency=efficiency_of(result),
        epochs=record["metered"]["epochs"],
        ensemble_size=result["ensemble_size"] if result else (len(record["ensemble"]["members"]) or None),
        downstream_avg=average,
        downstream=scores,
        compute_class=record["compute"]["class"],
        created=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        date=created.strftime("%Y-%m-%d"),
        sandbox=sandbox_kind(record),
    )


def sandbox_kind(record: dict) -> str:
    """`landlock` when the method's process was confined, else `none` (older records have no field)."""
    sandbox = record.get("sandbox")
    return str(sandbox.get("kind", "none")) if isinstance(sandbox, dict) else "none"


def _is_ranked(record: dict) -> bool:
    return record["status"] == "ok" and record["result"] is not None


def build_tables(records: list[LoadedRecord], pages: dict[str, str]) -> list[TrackTable]:
    """One table per (track name, data hash), ordered by track name then hash."""
    groups: dict[tuple[str, str], list[LoadedRecord]] = {}
    for loaded in records:
        track = loaded.record["track"]
        groups.setdefault((track["name"], track["data_hash"]), []).append(loaded)

    tables = []
    for (track, data_hash), members in sorted(groups.items()):
        ok = sorted((m for m in members if _is_ranked(m.record)),
                    key=lambda m: (m.record["result"]["val_loss"], parse_created(m.record["created"]), m.relpath))
        ranked: list[Row] = []
        for position, loaded in enumerate(ok):
            loss = loaded.record["result"]["val_loss"]
            tied = ranked and ok[position - 1].record["result"]["val_loss"] == loss
            rank = ranked[-1].rank if tied else position + 1
            ranked.append(make_row(loaded, pages[loaded.relpath], rank))
        others = sorted((m for m in members if not _is_ranked(m.record)),
                        key=lambda m: (m.record["status"], parse_created(m.record["created"]), m.relpath))
        unranked = [make_row(m, pages[m.relpath], None) for m in others]
        tasks = sorted({task for row in ranked + unranked for task in row.downstream})
        tables.append(TrackTable(track, data_hash, tuple(ranked), tuple(unranked), tuple(tasks)))
    return tables
