"""The reference methods score the same from their exported graphs as by their own code (slow).

Each of single_model, naive_ensemble and q0 trains on the synthetic track; its run is evaluated twice,
from the snapshots' graphs (in the harness's process) and by the method's code (in the sandboxed worker,
`--no-graphs`, caches cleared), and every snapshot's validation loss, the final result and the prior's
weights must agree within float32 noise. The largest difference is printed.

Run: pytest tests/studies/test_graph_equivalence.py -m slow -s
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.run.runner import RunRequest, evaluate_existing, run_method

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["single_model", "naive_ensemble", "q0"])
def test_graph_and_method_code_give_the_same_losses(method, synthetic_data, tmp_path):
    run_dir = run_method(RunRequest(method_dir=PROJECT / "submissions" / method, track="synthetic", epochs=2.0,
                                    data_dir=synthetic_data, out=tmp_path / "graph", progress=False))
    graph = json.loads((run_dir / "record.json").read_text())
    assert graph["status"] == "ok", graph["error"]
    assert {row["evaluated_by"] for row in graph["snapshots"]} == {"graph"}
    code_dir = tmp_path / "code"
    shutil.copytree(run_dir, code_dir, symlinks=True)
    shutil.rmtree(code_dir / "eval")
    evaluate_existing(code_dir, progress=False, eval_graphs=False)
    code = json.loads((code_dir / "record.json").read_text())
    assert {row["evaluated_by"] for row in code["snapshots"]} == {"method code"}
    pairs = [(a["val_loss"], b["val_loss"]) for a, b in zip(graph["snapshots"], code["snapshots"])]
    pairs.append((graph["result"]["val_loss"], code["result"]["val_loss"]))
    largest = max(abs(a - b) for a, b in pairs)
    print(f"\n{method}: {len(graph['snapshots'])} snapshots, largest |graph - code| val loss {largest:.3g} nats")
    assert largest < 1e-5
