"""records.csv: text a spreadsheet would run as a formula is escaped, numbers stay numbers."""

from __future__ import annotations

import csv
import io

from harness.formats.records import record_to_json
from leaderboard.collect import LoadedRecord
from leaderboard.downloads import records_csv
from leaderboard.naming import page_names
from leaderboard.tables import build_tables
from tests.leaderboard.factory import make_record

HYPERLINK = '=HYPERLINK("http://x")'


def csv_rows(records: list[dict]) -> tuple[list[str], list[dict]]:
    loaded = [LoadedRecord(f"synthetic/{r['run_id']}.json", r, record_to_json(r)) for r in records]
    tables = build_tables(loaded, page_names([item.relpath for item in loaded]))
    reader = csv.DictReader(io.StringIO(records_csv(tables)))
    rows = list(reader)
    return list(reader.fieldnames), rows


def test_formula_text_is_escaped_and_numbers_are_not():
    records = [
        make_record(0, method__name=HYPERLINK, result__data_efficiency__multiplier=-0.5),
        make_record(1, method__name="+SUM(A1:A9)", run_id="@run", compute__class="-2+3"),
        make_record(2, method__name="\tcmd", run_id="\rrun", compute__class="tiny"),
        make_record(3, method__name="plain-name", run_id="run-3"),
    ]
    _, rows = csv_rows(records)
    assert len(rows) == len(records)  # a carriage return inside a cell did not end its row
    by_loss = {float(row["val_loss"]): row for row in rows}  # val_loss is written as a number
    first, second, third, fourth = (by_loss[r["result"]["val_loss"]] for r in records)
    assert first["method"] == "'" + HYPERLINK
    assert first["data_efficiency_multiplier"] == "-0.5"  # a genuine negative number stays a number
    assert first["data_efficiency"] == "'-0.50×"  # its text form is text, and is escaped
    assert (second["method"], second["run_id"], second["compute_class"]) == ("'+SUM(A1:A9)", "'@run", "'-2+3")
    assert (third["method"], third["run_id"]) == ("'\tcmd", "'\rrun")
    assert (fourth["method"], fourth["run_id"], fourth["compute_class"]) == ("plain-name", "run-3", "tiny")
    assert fourth["rank"] == "3" and fourth["metered_epochs"] == "8.0"  # record 1 is in another class's table


def test_task_names_in_headers_are_escaped_too():
    record = make_record(0, downstream={"=evil": {"acc": 0.5, "acc_stderr": 0.01, "acc_norm": 0.4,
                                                 "acc_norm_stderr": 0.01, "n": 10}})
    header, rows = csv_rows([record])
    assert "'=evil_acc" in header and "'=evil_acc_norm" in header and "=evil_acc" not in header
    assert rows[0]["'=evil_acc"] == "0.5"
