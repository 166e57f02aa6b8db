"""The project's task configs: same requests and gold answers as lm-eval's built-ins, on the real splits."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import lm_eval
import pytest
from lm_eval.api.model import LM
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks._yaml_loader import load_yaml

from harness.eval.downstream import DEFAULT_TASKS, load_tasks, run_tasks
from harness.eval.downstream.tasks import task_manager, task_specs
from harness.errors import DataError, SlowrunError
from tests.conftest import shared_path

BUILTIN = Path(lm_eval.__file__).parent / "tasks"
BUILTIN_YAML = {"arc_easy": BUILTIN / "arc" / "arc_easy.yaml", "piqa": BUILTIN / "piqa" / "piqa.yaml",
                "sciq": BUILTIN / "sciq" / "sciq.yaml"}
LOCAL_FILES = {"arc_easy": ("arc_easy", "ARC-Easy-test.jsonl"), "piqa": ("piqa", "piqa_validation.jsonl"),
               "sciq": ("sciq", "sciq_test.json")}
# Published split sizes (PROVENANCE.md of the shared data, and the datasets' cards).
SIZES = {"arc_easy": 2376, "piqa": 1838, "sciq": 1000}


def raw_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines() if line]


@pytest.fixture(scope="module")
def data_dir():
    return shared_path("downstream")


@pytest.fixture(scope="module")
def ours(data_dir):
    return load_tasks(DEFAULT_TASKS, data_dir)["tasks"]


@pytest.fixture(scope="module")
def builtin(data_dir):
    """lm-eval's own configs, read from its yaml files, with every declared split served from the local file."""
    tasks = {}
    for name, path in BUILTIN_YAML.items():
        config = load_yaml(path)
        config.pop("tag", None)
        rows = raw_rows(data_dir.joinpath(*LOCAL_FILES[name]))
        splits = {config[key] for key in ("training_split", "validation_split", "test_split") if config.get(key)}
        config["custom_dataset"] = lambda splits=splits, rows=rows, **_: datasets.DatasetDict(
            {split: datasets.Dataset.from_list(rows) for split in splits})
        config["num_fewshot"] = 0
        tasks[name] = ConfigurableTask(config=config)
    return tasks


def requests_of(task, limit: int):
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return [(i.doc_id, i.idx, i.request_type, i.arguments) for i in task.instances]


def test_only_the_projects_configs_are_indexed():
    assert task_manager().all_tasks == sorted(DEFAULT_TASKS)


@pytest.mark.parametrize("name", DEFAULT_TASKS)
def test_requests_equal_lm_evals_builtin_config(name, ours, builtin):
    mine, theirs = requests_of(ours[name], None), requests_of(builtin[name], None)  # every document
    assert len({doc for doc, *_ in mine}) == SIZES[name]
    assert mine == theirs
    assert all(kind == "loglikelihood" for _, _, kind, _ in mine)
    docs = list(ours[name].eval_docs)
    docs = [docs[i] for i in special_rows(name, docs)]
    assert [ours[name].doc_to_target(d) for d in docs] == [builtin[name].doc_to_target(d) for d in docs]
    assert [ours[name].doc_to_text(d) for d in docs] == [builtin[name].doc_to_text(d) for d in docs]


@pytest.mark.parametrize("name", DEFAULT_TASKS)
def test_the_published_split_is_scored(name, ours):
    assert len(ours[name].eval_docs) == SIZES[name]
    assert ours[name].config.num_fewshot == 0


def independent_gold(name: str, doc: dict) -> int:
    """The gold choice index derived from the raw row by hand, not through the task's template."""
    if name == "arc_easy":
        key, labels = doc["answerKey"], doc["choices"]["label"]
        if key.isdigit():
            assert labels == [str(i) for i in range(1, len(labels) + 1)]
            return int(key) - 1
        assert labels == [chr(ord("A") + i) for i in range(len(labels))]
        return ord(key) - ord("A")
    if name == "piqa":
        return int(doc["label"])
    return 3  # SciQ lists the three distractors, then the correct answer


def test_arc_easy_numeric_and_e_keys_give_the_right_gold_index(ours):
    docs = list(ours["arc_easy"].eval_docs)
    numeric = [d for d in docs if d["answerKey"].isdigit()]
    fifth = [d for d in docs if d["answerKey"] == "E"]
    assert len(numeric) == 97 and len(fifth) == 1
    for doc in docs:
        assert ours["arc_easy"].doc_to_target(doc) == independent_gold("arc_easy", doc)
    assert ours["arc_easy"].doc_to_target(fifth[0]) == 4


def test_sciq_rows_without_support_start_at_the_question(ours):
    docs = [d for d in ours["sciq"].eval_docs if not d["support"].strip()]
    assert len(docs) == 116
    for doc in docs:
        assert ours["sciq"].doc_to_text(doc) == f"\nQuestion: {doc['question']}\nAnswer:"
        assert ours["sciq"].doc_to_choice(doc)[3] == doc["correct_answer"]


class OracleLM(LM):
    """Gives the gold choice (derived from the raw row by hand) log-likelihood 0 and every other choice -10,
    or, when shifted, prefers the choice after the gold one. lm-eval then computes the metrics."""

    def __init__(self, shift: int = 0):
        super().__init__()
        self.shift = shift

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        out = []
        for request in requests:
            n_choices = {"arc_easy": lambda d: len(d["choices"]["text"]), "piqa": lambda d: 2,
                         "sciq": lambda d: 4}[request.task_name](request.doc)
            preferred = (independent_gold(request.task_name, request.doc) + self.shift) % n_choices
            out.append((0.0 if request.idx == preferred else -10.0, False))  # idx: the choice's position
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def special_rows(name: str, docs) -> list[int]:
    """The first 30 documents and every row with an unusual shape: ARC's numeric and "E" keys, SciQ's
    missing support."""
    picked = set(range(30))
    for i, doc in enumerate(docs):
        if name == "arc_easy" and doc["answerKey"] not in "ABCD":
            picked.add(i)
        if name == "sciq" and not doc["support"].strip():
            picked.add(i)
    return sorted(picked)


def test_gold_answers_are_scored_as_gold(data_dir):
    from lm_eval.evaluator import evaluate

    loaded = load_tasks(DEFAULT_TASKS, data_dir)
    samples = {name: special_rows(name, task.eval_docs) for name, task in loaded["tasks"].items()}
    assert len(samples["arc_easy"]) >= 98 and len(samples["sciq"]) >= 116
    results = evaluate(lm=OracleLM(), task_dict=loaded, samples=samples, log_samples=False)
    for name in DEFAULT_TASKS:
        row = results["results"][name]
        assert row["acc,none"] == 1.0 and row["acc_norm,none"] == 1.0, name
        assert results["n-samples"][name]["effective"] == len(samples[name])
    wrong = run_tasks(OracleLM(shift=1), ("arc_easy",), data_dir, limit=40)
    assert wrong["arc_easy"]["acc"] == 0.0 and wrong["arc_easy"]["acc_norm"] == 0.0
    assert wrong["arc_easy"]["n"] == 40 and wrong["arc_easy"]["acc_stderr"] == 0.0


def test_broken_or_missing_local_files_are_refused(tmp_path, data_dir):
    (tmp_path / "piqa").mkdir()
    lines = data_dir.joinpath("piqa", "piqa_validation.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "piqa" / "piqa_validation.jsonl").write_text(lines[0] + "\n{broken\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"piqa_validation.jsonl:2: not valid JSON"):
        load_tasks(["piqa"], tmp_path)
    with pytest.raises(DataError, match="downstream data file not found"):
        load_tasks(["sciq"], tmp_path)


def test_bad_task_selection_is_refused(tmp_path):
    with pytest.raises(SlowrunError, match="unknown downstream task 'hellaswag'; choose from arc_easy, piqa, sciq"):
        task_specs(["hellaswag"])
    with pytest.raises(SlowrunError, match="no downstream tasks"):
        task_specs([])
    with pytest.raises(DataError, match="downstream data folder not found"):
        task_specs(["piqa"], tmp_path / "missing")
    with pytest.raises(SlowrunError, match="more than once"):
        run_tasks(OracleLM(), ["piqa", "piqa"], tmp_path)
    with pytest.raises(SlowrunError, match="positive number of documents"):
        run_tasks(OracleLM(), ["piqa"], tmp_path, limit=0.5)


@pytest.mark.parametrize("name", DEFAULT_TASKS)
def test_hub_source_and_scored_split_are_lm_evals(name):
    from harness.eval.downstream.splits import scored_split
    from harness.eval.downstream.tasks import task_config

    mine, theirs = task_config(name), load_yaml(BUILTIN_YAML[name])
    assert (mine["dataset_path"], mine.get("dataset_name")) == (theirs["dataset_path"], theirs.get("dataset_name"))
    assert scored_split(mine) == (theirs.get("test_split") or theirs["validation_split"])
    assert mine["metric_list"] == theirs["metric_list"]
    assert task_specs([name]) == [name]  # Hub data: lm-eval loads the registered config by name
