"""Any split of a task from a local file, named in the scores; rows checked by schema, not by count;
document limits per task."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest

from harness.cli import _downstream_files, _downstream_limits, build_parser
from harness.eval.downstream import run_tasks
from harness.eval.downstream.limits import DocumentLimits
from harness.eval.downstream.splits import DownstreamData, DownstreamSplitWarning, SplitFile
from harness.errors import DataError, SlowrunError
from tests.conftest import shared_path
from tests.downstream.test_tasks import OracleLM


@pytest.fixture(scope="module")
def shared():
    return shared_path("downstream")


def jsonl_lines(path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_rows(path, rows: list[dict]):
    if path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def no_split_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DownstreamSplitWarning)
        yield


def test_an_arc_easy_validation_file_is_scored_and_named(tmp_path, shared, no_split_warnings):
    """570 rows, the size of ARC-Easy's published validation split: scored whole, without a warning, and the
    scores say which split, how many rows, and which file (by its own sha256)."""
    rows = [json.loads(line) for line in jsonl_lines(shared / "arc_easy" / "ARC-Easy-test.jsonl")[-570:]]
    path = write_rows(tmp_path / "ARC-Easy-validation.jsonl", rows)
    data = DownstreamData(files=(SplitFile("arc_easy", "validation", path),))
    scores = run_tasks(OracleLM(), ("arc_easy",), data)["arc_easy"]
    assert scores["acc"] == 1.0 and scores["n"] == 570
    assert scores["split"] == "validation" and scores["split_rows"] == 570 and scores["published_rows"] == 570
    assert scores["source"] == {"file": "ARC-Easy-validation.jsonl",
                                "sha256": "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()}


def test_the_split_scored_is_in_the_scores_even_when_sizes_agree(tmp_path, shared, no_split_warnings):
    """SciQ's validation and test splits both have 1,000 rows, so a count cannot tell them apart: the
    scores name the split given, and a per-task file wins over the folder's default file."""
    rows = json.loads((shared / "sciq" / "sciq_test.json").read_text(encoding="utf-8"))
    path = write_rows(tmp_path / "sciq_validation.json", rows[::-1])
    as_validation = DownstreamData(folder=shared, files=(SplitFile("sciq", "validation", path),))
    scores = run_tasks(OracleLM(), ("sciq", "piqa"), as_validation, limit=5)
    assert (scores["sciq"]["split"], scores["sciq"]["split_rows"], scores["sciq"]["published_rows"]) == \
        ("validation", 1000, 1000)
    assert scores["sciq"]["source"]["file"] == "sciq_validation.json"
    assert (scores["piqa"]["split"], scores["piqa"]["split_rows"]) == ("validation", 1838)  # from the folder
    from_folder = run_tasks(OracleLM(), ("sciq",), shared, limit=5)["sciq"]
    assert (from_folder["split"], from_folder["split_rows"], from_folder["source"]["file"]) == \
        ("test", 1000, "sciq_test.json")


def test_a_file_of_another_size_is_scored_with_a_warning(tmp_path, shared):
    lines = jsonl_lines(shared / "piqa" / "piqa_validation.jsonl")[:7]
    path = tmp_path / "piqa_head.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = DownstreamData(files=(SplitFile("piqa", "validation", path),))
    with pytest.warns(DownstreamSplitWarning, match="has 7 rows, but the published validation split has 1838"):
        scores = run_tasks(OracleLM(), ("piqa",), data)["piqa"]
    assert (scores["n"], scores["split_rows"], scores["published_rows"], scores["acc"]) == (7, 7, 1838, 1.0)
    unpublished = DownstreamData(files=(SplitFile("piqa", "dev", path),))
    with pytest.warns(DownstreamSplitWarning, match="split 'dev', which the task does not publish"):
        scores = run_tasks(OracleLM(), ("piqa",), unpublished)["piqa"]
    assert scores["split"] == "dev" and scores["published_rows"] is None


@pytest.mark.parametrize("task, name, break_row, message", [
    ("sciq", "s.json", lambda r: r.pop("support"), r"row 2: field 'support' is missing"),
    ("arc_easy", "a.jsonl", lambda r: r["choices"].update(text="one answer"), r"row 2: field 'choices.text' should be a list"),
    ("arc_easy", "a.jsonl", lambda r: r["choices"]["label"].__setitem__(1, 2),
     r"row 2: field 'choices.label\[1\]' should be a string"),
    ("piqa", "p.jsonl", lambda r: r.update(label="1"), r"row 2: field 'label' should be an integer, found '1'"),
])
def test_rows_without_the_fields_the_prompt_reads_are_refused(tmp_path, shared, task, name, break_row, message):
    source = {"sciq": shared / "sciq" / "sciq_test.json", "arc_easy": shared / "arc_easy" / "ARC-Easy-test.jsonl",
              "piqa": shared / "piqa" / "piqa_validation.jsonl"}[task]
    rows = (json.loads(source.read_text(encoding="utf-8"))[:3] if source.suffix == ".json"
            else [json.loads(line) for line in jsonl_lines(source)[:3]])
    break_row(rows[1])
    data = DownstreamData(files=(SplitFile(task, "test", write_rows(tmp_path / name, rows)),))
    with pytest.raises(DataError, match=message):
        run_tasks(OracleLM(), (task,), data)


def test_limits_per_task_beside_one_for_every_task(shared):
    scores = run_tasks(OracleLM(), ("arc_easy", "piqa", "sciq"), shared,
                       limit=DocumentLimits.parse(["3", "arc_easy=11"]))
    assert {name: s["n"] for name, s in scores.items()} == {"arc_easy": 11, "piqa": 3, "sciq": 3}
    only_one = run_tasks(OracleLM(), ("piqa", "sciq"), shared, limit=DocumentLimits.parse(["piqa=4"]))
    assert (only_one["piqa"]["n"], only_one["sciq"]["n"]) == (4, 1000)
    bigger_than_the_split = run_tasks(OracleLM(), ("sciq",), shared, limit=DocumentLimits.parse(["sciq=5000"]))
    assert bigger_than_the_split["sciq"]["n"] == 1000


def test_command_line_forms():
    args = build_parser().parse_args(["eval", "RUN", "--downstream-limit", "100", "--downstream-limit", "arc_easy=7",
                                      "--downstream-file", "sciq:validation=/data/sciq=v.json"])
    assert _downstream_limits(args) == DocumentLimits(100, (("arc_easy", 7),))
    assert _downstream_files(args) == (SplitFile("sciq", "validation", __import__("pathlib").Path("/data/sciq=v.json")),)
    assert _downstream_limits(build_parser().parse_args(["eval", "RUN"])) == DocumentLimits()
    for bad, message in ((["x"], "expected N or TASK=N"), (["0"], "positive"), (["=5"], "expected TASK=N"),
                         (["3", "4"], "given twice"), (["piqa=2", "piqa=3"], "more than once")):
        with pytest.raises(SlowrunError, match=message):
            DocumentLimits.parse(bad)
    for bad in ("sciq=/x.json", "sciq:=/x.json", ":test=/x.json", "sciq:test="):
        with pytest.raises(SlowrunError, match="expected TASK:SPLIT=PATH"):
            SplitFile.parse(bad)


def test_limits_and_files_for_tasks_not_scored_are_refused(tmp_path, shared):
    with pytest.raises(SlowrunError, match="limit is given for hellaswag, which is not scored"):
        run_tasks(OracleLM(), ("piqa",), shared, limit=DocumentLimits(None, (("hellaswag", 3),)))
    with pytest.raises(SlowrunError, match="file is given for sciq, which is not scored"):
        run_tasks(OracleLM(), ("piqa",), DownstreamData(files=(SplitFile("sciq", "test", tmp_path / "s.json"),)))
    with pytest.raises(SlowrunError, match="more than one downstream file given for sciq"):
        DownstreamData(files=(SplitFile("sciq", "test", tmp_path / "a"), SplitFile("sciq", "validation", tmp_path / "b")))


def test_stored_limits_of_every_form_read_back():
    """Run specs written before per-task limits hold one number or null."""
    assert DocumentLimits.of(6) == DocumentLimits(6)
    assert DocumentLimits.of(None) == DocumentLimits()
    limits = DocumentLimits(20, (("arc_easy", 5), ("sciq", 9)))
    assert DocumentLimits.of(json.loads(json.dumps(limits.to_json()))) == limits
    assert (limits.for_task("arc_easy"), limits.for_task("piqa")) == (5, 20)
