"""Run-level evaluation: the record's numbers against independent float64 computations."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import torch

from harness.cli import main
from harness.data.store import TokenStore
from harness.eval.evaluation import open_eval_data
from harness.formats.snapshots import list_snapshots, load_snapshot_model
from tests.runner.test_runs import TRAIN_ONE_EPOCH, run

TWO_SNAPSHOTS = TRAIN_ONE_EPOCH + """
for _ in range(30):
    inputs, targets = next(stream)
    step(model, opt, inputs, targets)
ctx.save_snapshot(model, "second")
ctx.set_ensemble({"first": 0.3, "second": 0.7})
"""


def float64_logp(model, windows: np.ndarray) -> np.ndarray:
    """log p(target) for every target, in float64, straight from the logits."""
    x = torch.from_numpy(np.asarray(windows, dtype=np.int64))
    with torch.no_grad():
        logits = model(x[:, :-1]).double()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, x[:, 1:, None]).squeeze(-1)
    return logp.numpy().reshape(-1)


def test_snapshot_and_ensemble_losses_match_float64(make_method, synthetic_data):
    run_dir, record = run(make_method(TWO_SNAPSHOTS), synthetic_data, epochs=3.0)
    assert record["status"] == "ok"
    windows = TokenStore.open(synthetic_data, "val").windows(128)
    per_member = {}
    for snap in list_snapshots(run_dir / "snapshots"):
        per_member[snap.tag] = float64_logp(load_snapshot_model(snap), windows)
    rows = {r["tag"]: r for r in record["snapshots"]}
    for tag, logp in per_member.items():
        assert math.isclose(rows[tag]["val_loss"], -logp.mean(), rel_tol=1e-5)
    mixed = np.log(0.3 * np.exp(per_member["first"]) + 0.7 * np.exp(per_member["second"]))
    assert record["ensemble"]["source"] == "method"
    assert math.isclose(record["result"]["val_loss"], -mixed.mean(), rel_tol=1e-5)
    assert record["result"]["ensemble_size"] == 2
    # the curve only uses snapshots stamped at or before each point
    epochs = {r["tag"]: r["epochs"] for r in record["snapshots"]}
    for point in record["curve"]:
        assert all(epochs[m] <= point["epochs"] for m in point["members"])


def test_eval_recomputes_from_snapshots_without_training(make_method, synthetic_data):
    run_dir, record = run(make_method(TWO_SNAPSHOTS), synthetic_data, epochs=3.0)
    metrics_before = (run_dir / "metrics.jsonl").read_text()
    shutil.rmtree(run_dir / "eval")  # caches gone: everything is recomputed from the snapshots
    assert main(["eval", str(run_dir), "--quiet"]) == 0
    again = json.loads((run_dir / "record.json").read_text())
    assert (run_dir / "metrics.jsonl").read_text() == metrics_before  # no training happened
    for key in ("snapshots", "ensemble", "result", "k_sweep", "curve", "metered", "status"):
        assert again[key] == record[key], key


def test_bits_per_byte_counts_bos_in_the_loss_with_zero_bytes(tmp_path):
    from harness.data.prepare import prepare_track
    from tests.data.helpers import local_track
    from tests.data.test_bad_input import write_docs

    data = write_docs(tmp_path / "docs.jsonl", 300)
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
    prepared = tmp_path / "prepared"
    prepare_track(local_track([data], seq_len=32), prepared, progress=False)
    eval_data = open_eval_data(prepared, 32)
    table = np.fromfile(prepared / "token_bytes.bin", dtype=np.int32)
    val = TokenStore.open(prepared, "val")
    assert table[val.bos_id] == 0
    for i in range(val.n_documents - 1):  # the last one is truncated at the budget
        doc = np.asarray(val.document(i))
        assert table[doc].sum() == len(texts[i].encode("utf-8"))
    targets = np.asarray(val.windows(32))[:, 1:].reshape(-1)
    np.testing.assert_array_equal(eval_data.val_target_bytes, table[targets])
    assert (eval_data.val_target_bytes[targets == val.bos_id] == 0).all()
