"""Each task's scores carry how they were made: lm-eval's version, a digest of the pinned task config, the
shots, the few-shot seed where one applies and the model's padding side (split and rows sit beside them).

Expected digests are computed here from the YAML files, loaded without the code under test."""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
from pathlib import Path

import pytest
import yaml
from lm_eval.tasks._yaml_loader import load_yaml

from harness.eval.downstream import run_tasks, score_downstream
from harness.eval.downstream.score import FEWSHOT_SEED, padding_side_of, task_provenance
from harness.eval.downstream.tasks import config_sha256, known_tasks, task_config
from tests.conftest import shared_path
from tests.downstream.conftest import SEQ_LEN
from tests.downstream.test_tasks import OracleLM

PINNED = Path(__file__).resolve().parents[2] / "harness" / "eval" / "downstream" / "tasks"


def independent_digest(config: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace, UTF-8), written out here."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode("utf-8")).hexdigest()


def pinned(name: str) -> dict:
    return yaml.safe_load((PINNED / f"{name}.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["arc_easy", "piqa", "sciq"])
def test_config_digest_is_the_sha256_of_the_pinned_yaml_as_canonical_json(name):
    assert name in known_tasks()
    expected = independent_digest(pinned(name))
    assert len(expected) == 64
    assert config_sha256(task_config(name)) == expected
    # lm-eval's own YAML loader (what its TaskManager hands a Hub task) reads the same config
    assert independent_digest(load_yaml(str(PINNED / f"{name}.yaml"))) == expected


def test_the_digest_ignores_yaml_formatting_but_not_a_value(tmp_path):
    config = pinned("arc_easy")
    # the same config written out again: other key order, other quoting, no comments
    reordered = dict(reversed(list(config.items())))
    rewritten = tmp_path / "arc_easy.yaml"
    rewritten.write_text(yaml.safe_dump(reordered, sort_keys=False, default_style='"'), encoding="utf-8")
    assert rewritten.read_text(encoding="utf-8") != (PINNED / "arc_easy.yaml").read_text(encoding="utf-8")
    assert config_sha256(yaml.safe_load(rewritten.read_text(encoding="utf-8"))) == config_sha256(config)

    digest = config_sha256(config)
    for change in (lambda c: c.update(doc_to_text="Q: {{question}}\nA:"),
                   lambda c: c.update(num_fewshot=5),
                   lambda c: c["metric_list"].pop(),
                   lambda c: c["metadata"]["split_rows"].update(test=2375)):
        changed = copy.deepcopy(config)
        change(changed)
        assert config_sha256(changed) == independent_digest(changed) != digest


def test_scores_carry_the_provenance_of_each_task():
    data = shared_path("downstream")
    scores = run_tasks(OracleLM(), ("piqa", "sciq"), data, limit=3)
    for name, facts in scores.items():
        assert facts["provenance"] == {
            "lm_eval": importlib.metadata.version("lm_eval"),
            "config_sha256": independent_digest(pinned(name)),
            "num_fewshot": 0,  # the pinned configs are zero-shot
            "fewshot_seed": None,  # no example is drawn, so no seed applies
            "padding_side": None,  # an lm-eval model that does not say how it pads
        }
    # the split facts stay where they were, not repeated inside provenance
    assert (scores["piqa"]["split"], scores["piqa"]["split_rows"]) == ("validation", 1838)
    assert (scores["sciq"]["split"], scores["sciq"]["split_rows"]) == ("test", 1000)
    json.dumps(scores, allow_nan=False)  # a record holds it as JSON


def test_the_projects_model_says_it_pads_on_the_right(shared_data, tokenizer, model):
    got = score_downstream([model], tokenizer=tokenizer, seq_len=SEQ_LEN, tasks=("piqa",),
                           data_dir=shared_data("downstream"), limit=2, batch_size=2)
    assert got["piqa"]["provenance"]["padding_side"] == "right"
    assert got["piqa"]["provenance"]["lm_eval"] == importlib.metadata.version("lm_eval")


def test_padding_side_is_read_from_the_model_or_its_tokenizer():
    class Tokenizer:
        padding_side = "left"

    class HuggingFaceLike:
        tokenizer = Tokenizer()

    assert padding_side_of(HuggingFaceLike()) == "left"
    assert padding_side_of(OracleLM()) is None


def test_a_seed_is_recorded_only_when_shots_are_drawn():
    config = pinned("piqa")
    assert task_provenance(config, 5, "left")["fewshot_seed"] == FEWSHOT_SEED
    assert task_provenance(config, 5, "left")["num_fewshot"] == 5
    assert task_provenance(config, 0, "right")["fewshot_seed"] is None
    assert task_provenance(config, None, None)["num_fewshot"] is None
