"""The machine-readable downloads of the board: records.json (whole records) and records.csv (one row each).

Both are ordered like the site (track table, then rank, then the unranked rows) and written with fixed
formatting, so the same records give the same bytes. Text in the CSV comes from submitters and the file
is meant for spreadsheets, which run a cell beginning with `=`, `+`, `-` or `@` as a formula, so such
text cells (and tab or carriage return starts) get a leading `'` (the OWASP rule for CSV injection).
Numbers are written as numbers, so a negative number stays a number.
"""

from __future__ import annotations

import json

import pandas as pd

from harness.formats.records import SCHEMA_VERSION
from leaderboard.collect import LoadedRecord
from leaderboard.tables import TrackTable

_CSV_COLUMNS = [
    "track", "data_hash", "rank", "status", "method", "run_id", "val_loss", "val_bpb",
    "test_loss", "test_gap", "test_gap_threshold", "test_gap_flagged", "test_split_hash", "test_split_keyed",
    "data_efficiency", "data_efficiency_multiplier", "data_efficiency_note", "metered_epochs",
    "ensemble_size", "downstream_avg_acc", "compute_class", "created", "file",
    "entry", "entry_n", "entry_mean_val_loss", "provenance", "train_s", "wall_s", "hardware", "unranked_reasons",
]


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value):
    """A text cell a spreadsheet will show as text, never run; any other value unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def records_json(tables: list[TrackTable], records: dict[str, LoadedRecord], last_update: str | None) -> str:
    entries = []
    for table in tables:
        for entry in table.entries:
            for row in entry.runs:
                entries.append({"file": row.relpath, "rank": entry.rank, "page": f"r/{row.page}.html",
                                "entry": f"e/{entry.page}.html", "provenance": row.provenance.kind,
                                "record": records[row.relpath].record})
    document = {"schema_version": SCHEMA_VERSION, "last_update": last_update, "records": entries}
    # Compact on purpose: an indent switches json to its pure-Python encoder, ten times slower.
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False) + "\n"


def _test_cells(test) -> dict:
    """A run's held-out test score (leaderboard/holdout.py), empty cells for a run without one."""
    if test is None:
        return {}
    return {"test_loss": test.loss, "test_gap": test.gap, "test_gap_threshold": test.threshold,
            "test_gap_flagged": test.flagged, "test_split_hash": ",".join(test.split_hashes) or None,
            "test_split_keyed": test.keyed}


def records_csv(tables: list[TrackTable]) -> str:
    tasks = sorted({task for table in tables for task in table.tasks})
    task_columns = [f"{task}_{metric}" for task in tasks for metric in ("acc", "acc_norm")]
    rows = []
    for table in tables:
        for entry, row in ((entry, row) for entry in table.entries for row in entry.runs):
            item = {
                "track": table.track, "data_hash": table.data_hash, "rank": entry.rank, "status": row.status,
                "method": row.method, "run_id": row.run_id, "val_loss": row.val_loss, "val_bpb": row.val_bpb,
                **_test_cells(row.test),
                "data_efficiency": None if row.efficiency.text == "—" else row.efficiency.text,
                "data_efficiency_multiplier": row.efficiency.multiplier,
                "data_efficiency_note": row.efficiency.note, "metered_epochs": row.epochs,
                "ensemble_size": row.ensemble_size, "downstream_avg_acc": row.downstream_avg,
                "compute_class": row.compute_class, "created": row.created, "file": row.relpath,
                "entry": entry.page, "entry_n": entry.n, "entry_mean_val_loss": entry.mean,
                "provenance": row.provenance.text, "train_s": row.train_s, "wall_s": row.wall_s,
                "hardware": row.hardware, "unranked_reasons": "; ".join(entry.reasons) or None,
            }
            for task, score in row.downstream.items():
                item[f"{task}_acc"] = score.acc
                item[f"{task}_acc_norm"] = score.acc_norm
            rows.append({csv_safe(key): csv_safe(value) for key, value in item.items()})
    frame = pd.DataFrame(rows, columns=[csv_safe(column) for column in _CSV_COLUMNS + task_columns])
    for column in ("rank", "ensemble_size", "entry_n"):
        frame[column] = frame[column].astype("Int64")  # integers stay integers beside missing values
    # CRLF rows (RFC 4180): the writer quotes a cell holding any line-terminator character, and only CRLF
    # makes that include a lone carriage return, which would otherwise end the row for many readers.
    return frame.to_csv(index=False, lineterminator="\r\n")
