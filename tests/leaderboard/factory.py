"""Valid schema-1 records made in the test, with overrides, so no test depends on a fixture file."""

from __future__ import annotations

import copy
import hashlib
import math
import re
from datetime import datetime, timedelta, timezone

DATA_HASH = "a" * 64
OTHER_DATA_HASH = "b" * 64


def method_hash(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def make_record(index: int = 0, **overrides) -> dict:
    """A plausible finished run: the numbers vary smoothly with `index` so rankings are predictable.

    Overrides replace top-level fields; a key with `__` reaches inside, e.g. `method__name="x"` or
    `snapshots__0__val_loss=None` (list positions as numbers).
    """
    final_loss = 3.0 + 0.01 * index
    epochs = [1.0, 2.0, 4.0, 8.0]
    snapshots = [{"tag": f"s{i}", "epochs": e, "val_loss": final_loss + 1.0 / (1.0 + e),
                  "val_bpb": (final_loss + 1.0 / (1.0 + e)) / math.log(2) / 4.0, "meta": {"cycle": i},
                  "evaluated_by": "graph"}
                 for i, e in enumerate(epochs)]
    created = datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(hours=index)
    record = {
        "schema_version": 2,
        "run_id": f"run-{index:05d}",
        "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "status": "ok",
        "error": None,
        "method": {"name": f"method-{index}", "description": "a test method", "authors": ["A. Author"],
                   "hash": method_hash(f"method-{index}"), "entry": "train:main"},
        "track": {"name": "synthetic", "data_hash": DATA_HASH, "train_tokens": 100_000, "val_tokens": 60_000,
                  "seq_len": 128, "vocab_size": 2048, "tokenizer": "byte-bpe"},
        "budget_epochs": 8.0,
        "seed": index,
        "hparams": {"lr": 0.01, "width": 64, "schedule": {"kind": "cyclic", "cycles": 4}},
        "metered": {"epochs": 8.0, "train_tokens": 800_000, "per_stream": {"main": 800_000},
                    "fitness_tokens": 4096},
        "snapshots": snapshots,
        "ensemble": {"members": [{"tag": "s2", "weight": 0.4}, {"tag": "s3", "weight": 0.6}], "source": "prior"},
        "result": {"val_loss": final_loss, "val_bpb": final_loss / math.log(2) / 4.0, "ensemble_size": 2,
                   "data_efficiency": {"multiplier": 2.5 - 0.01 * index, "bound": None, "flag": None}},
        "k_sweep": [{"k": k, "val_loss": final_loss + 0.05 / k, "val_bpb": (final_loss + 0.05 / k) / math.log(2) / 4.0,
                     "members": [{"tag": f"s{3 - j}", "weight": 1.0 / k} for j in range(k)]} for k in (1, 2, 3)],
        "curve": [{"epochs": e, "val_loss": final_loss + 0.8 / (1.0 + e)} for e in epochs],
        # an accuracy that varies with the index but stays a fraction (the build refuses one above 1)
        "downstream": {"piqa": {"acc": 0.55 + 0.001 * (index % 400), "acc_stderr": 0.01, "acc_norm": 0.56,
                                "acc_norm_stderr": 0.01, "n": 1838},
                       "sciq": {"acc": 0.60, "acc_stderr": 0.015, "acc_norm": 0.50, "acc_norm_stderr": 0.015,
                                "n": 1000}},
        "timings": {"train_s": 120.0, "eval_s": 30.0, "other_s": 5.0},
        "compute": {"class": "tiny", "device": "cpu", "world_size": 1},
        "sandbox": {"kind": "landlock", "abi": 7},
        "environment": {"python": "3.11.7", "torch": "2.13.0", "platform": "Linux", "cpu": "test cpu",
                        "gpu": None, "harness_version": "0.1.0", "git_commit": "0" * 40},
    }
    for key, value in overrides.items():
        target = record
        *parents, leaf = key.split("__")
        for parent in parents:
            target = target[int(parent)] if isinstance(target, list) else target[parent]
        if isinstance(target, list):
            target[int(leaf)] = copy.deepcopy(value)
        else:
            target[leaf] = copy.deepcopy(value)
    return record


def failed_record(index: int = 0, **overrides) -> dict:
    """A run that crashed before producing a result: still a record."""
    fields = dict(status="failed", result=None, k_sweep=[], downstream=None,
                  error={"type": "RuntimeError", "message": "loss became NaN", "traceback": "Traceback ...\n"})
    fields.update(overrides)
    return make_record(index, **fields)


def write_board(records_dir, records: list[dict], *, track_folder: str | None = None) -> list:
    """Write records as a maintainer's records folder would hold them: one JSON file per run."""
    import json
    from pathlib import Path

    paths = []
    for record in records:
        folder = Path(records_dir) / (track_folder or record["track"]["name"])
        folder.mkdir(parents=True, exist_ok=True)
        run_id = record["run_id"]
        safe = run_id if re.fullmatch(r"[\w.-]+", run_id) else hashlib.sha256(run_id.encode()).hexdigest()[:12]
        path = folder / f"{safe}.json"
        path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
