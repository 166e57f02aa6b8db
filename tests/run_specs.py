"""A complete run.json for tests that need one but no prepared data or method (every field given)."""

from __future__ import annotations

from harness.common.distributed import LaunchSpec
from harness.formats.run_spec import RunSpec


def run_spec(**changes) -> RunSpec:
    return RunSpec(
        run_id="run", method={"name": "m"}, method_dir="/nonexistent/method", entry="train:main",
        track={"name": "synthetic", "seq_len": 128}, data_dir="/nonexistent/data", data_hash="sha256:0",
        tokenizer="byte", vocab_size=256, train_tokens=0, val_tokens=0, budget=1.0, seed=0, hparams={},
        device="cpu", compute_class="unlimited", launch=LaunchSpec().to_dict()).replace(**changes)
