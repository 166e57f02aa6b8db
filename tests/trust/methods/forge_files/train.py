"""Try to forge results by writing where the harness keeps them, then train honestly.

Each attempt's outcome is logged through the context (the server writes metrics.jsonl), so the test can
see that every write was refused and that the run still ended ok."""

import json
import os
from pathlib import Path

from tests.trust.methods.common import attempt, train_and_snapshot


def main(ctx):
    run_dir = Path(ctx.scratch_dir).parents[1]  # sandbox/scratch -> run folder
    prepared = Path(ctx.hparams["target"])
    fake = json.dumps({"status": "ok", "val_loss": -3.0})
    targets = {
        "train_result": lambda: (run_dir / "train_result.json").write_text(fake),
        "record": lambda: (run_dir / "record.json").write_text(fake),
        "run_spec": lambda: (run_dir / "run.json").write_text(fake),
        "eval_cache": lambda: (run_dir / "eval").mkdir(),
        "snapshot_folder": lambda: (run_dir / "snapshots" / "forged").mkdir(),
        "checkpoint": lambda: (run_dir / "checkpoint" / "rank0.json").write_text(fake),
        "metrics": lambda: open(run_dir / "metrics.jsonl", "a").write(fake),
        "prepared_train": lambda: open(prepared / "train.tokens.bin", "r+b").write(b"\0\0"),
        "prepared_manifest": lambda: (prepared / "manifest.json").write_text(fake),
        "hard_link": lambda: os.link(prepared / "val.tokens.bin", ctx.scratch_dir / "val.bin"),
        "symlink_read": lambda: (os.symlink(prepared / "val.tokens.bin", ctx.scratch_dir / "v.bin"),
                                 open(ctx.scratch_dir / "v.bin", "rb").read(1)),
    }
    ctx.log(attempts={name: attempt(action) for name, action in targets.items()})
    train_and_snapshot(ctx)
