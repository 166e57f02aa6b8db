"""Evaluation attacked by the model's code: each attack is refused (by a probe, or by the graph check,
after which the snapshot is run by its code in a fresh fork per batch) or scores exactly the honest loss
of its weights, computed here in float64."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from harness.eval.evaluation import open_eval_data
from tests.trust.runs import run

# attack -> (how it is evaluated, what the graph check said (a phrase, or None: the graph was accepted or
# never exported), the outcome: "honest" or the start of the probe's reason)
EXPECTED = {
    "honest": ("graph", None, "honest"),
    "counts": ("method code", "not exported", "honest"),
    "prefix_memory": ("method code", "not exported", "causality probe failed"),
    "half_peek": ("graph", None, "causality probe failed"),
    "custom_op": ("method code", "only ATen operators", "honest"),
    "mutates_buffer": ("method code", "mutate nothing", "honest"),
    "impure": ("method code", "not on the harness's list", "probe failed"),
}


def honest_loss(run_dir, data) -> float:
    table = load_file(str(run_dir / "snapshots" / "attack" / "model.safetensors"))["table.weight"].double()
    windows = torch.from_numpy(np.asarray(open_eval_data(data, 128).val_windows, dtype=np.int64))
    logp = torch.log_softmax(table[windows[:, :-1]], dim=-1).gather(-1, windows[:, 1:, None])
    return float(-logp.mean())


@pytest.mark.parametrize("attack", sorted(EXPECTED))
def test_an_evaluation_attack_is_refused_or_scores_its_honest_loss(attack, synthetic_data, tmp_path):
    by, graph_note, outcome = EXPECTED[attack]
    run_dir, record = run("evaluation_attacks", synthetic_data, tmp_path, overrides=(("attack", attack),))
    # a run whose every snapshot is refused ends invalid, with the reasons
    assert record["status"] == ("ok" if outcome == "honest" else "invalid"), record["error"]
    spec = json.loads((run_dir / "snapshots" / "attack" / "spec.json").read_text())
    if graph_note is None:
        assert "sha256" in spec["graph"], spec["graph"]
    else:
        assert graph_note in spec["graph"]["refused"], spec["graph"]
    if outcome == "honest":
        assert record["invalid_snapshots"] == []
        row = record["snapshots"][0]
        assert row["evaluated_by"] == by
        assert abs(row["val_loss"] - honest_loss(run_dir, synthetic_data)) < 1e-5
    else:
        assert [r["tag"] for r in record["invalid_snapshots"]] == ["attack"]
        assert outcome in record["invalid_snapshots"][0]["reason"], record["invalid_snapshots"][0]["reason"]
