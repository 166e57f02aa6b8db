"""Evaluation shared out over several workers gives the numbers of one; bf16 evaluation is recorded as such
and never reuses float32 caches."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from harness.errors import SlowrunError
from harness.eval.evaluation import eval_devices, resolve_eval_dtype
from tests.eval_worker.conftest import add_snapshot, causal_model, float64_logp, val_windows
from tests.eval_worker.test_evaluate import evaluate

RTOL = 1e-6


def numbers(result) -> dict:
    """Every loss the record carries, by name."""
    out = {f"snapshot/{r['tag']}": r["val_loss"] for r in result["snapshots"]}
    out["result"] = result["result"]["val_loss"]
    out.update({f"k{r['k']}": r["val_loss"] for r in result["k_sweep"]})
    out.update({f"curve/{p['epochs']}": p["val_loss"] for p in result["curve"]})
    out["prior"] = result["prior"]["fitness_loss"]
    return out


def test_two_workers_side_by_side_give_the_record_numbers_of_one(run_dir, method_dir, synthetic_data, tmp_path):
    for i in range(5):
        add_snapshot(run_dir, f"s{i}", causal_model(i + 1), train_tokens=100 * (i + 1))
    twin = tmp_path / "twin"
    shutil.copytree(run_dir, twin)
    one = evaluate(run_dir, synthetic_data, method_dir, ensemble="prior", fitness_docs=20)
    two = evaluate(twin, synthetic_data, method_dir, ensemble="prior", fitness_docs=20, devices=("cpu", "cpu"))
    limits = {"per_snapshot_s": "rule", "total_s": None}
    assert two["evaluation"] == {"dtype": "float32", "devices": ["cpu", "cpu"], "limits": limits}
    assert one["evaluation"] == {"dtype": "float32", "devices": ["cpu"], "limits": limits}
    a, b = numbers(one), numbers(two)
    assert a.keys() == b.keys() and len(a) > 8
    for name in a:
        assert b[name] == pytest.approx(a[name], rel=RTOL), name
    assert [r["tag"] for r in two["snapshots"]] == [f"s{i}" for i in range(5)]  # gathered in order


def test_bf16_evaluation_is_close_to_float64_recorded_and_never_reuses_float32_caches(run_dir, method_dir,
                                                                                       synthetic_data):
    model = causal_model(3)
    add_snapshot(run_dir, "a", model)
    exact = evaluate(run_dir, synthetic_data, method_dir)
    fp32_cache = np.load(run_dir / "eval" / "a.val.npy").copy()
    half = evaluate(run_dir, synthetic_data, method_dir, eval_dtype="bfloat16")
    assert half["evaluation"]["dtype"] == "bfloat16"
    bf16_cache = np.load(run_dir / "eval" / "a.val.npy")
    assert not np.array_equal(bf16_cache, fp32_cache)  # scored again in bf16, not read back
    reference = -float64_logp(model, val_windows(synthetic_data)).mean()
    assert exact["snapshots"][0]["val_loss"] == pytest.approx(reference, rel=1e-6)
    difference = abs(half["snapshots"][0]["val_loss"] - reference)
    assert 0 < difference < 0.01 * reference  # bf16: close, not exact
    again = evaluate(run_dir, synthetic_data, method_dir)  # back to float32: scored again, exact
    np.testing.assert_array_equal(np.load(run_dir / "eval" / "a.val.npy"), fp32_cache)
    assert again["snapshots"][0]["val_loss"] == exact["snapshots"][0]["val_loss"]


def test_eval_dtype_and_devices_rules():
    assert resolve_eval_dtype("auto", "cuda") == "bfloat16"
    assert resolve_eval_dtype("auto", "cpu") == "float32"
    assert resolve_eval_dtype("float32", "cuda") == "float32"
    with pytest.raises(SlowrunError, match="auto, float32 or bfloat16"):
        resolve_eval_dtype("fp8", "cuda")
    assert eval_devices("cuda", 4) == ("cuda:0", "cuda:1", "cuda:2", "cuda:3")
    assert eval_devices("cpu", 2) == ("cpu", "cpu")
    with pytest.raises(SlowrunError):
        eval_devices("cpu", 0)
