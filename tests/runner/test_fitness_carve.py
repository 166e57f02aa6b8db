"""The fitness carve is the method's choice: declared in method.toml, taken for that run only."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from harness.data.fitness import plan_carve
from harness.errors import DataError
from harness.run.entry_check import check_method
from harness.run.runner import RunRequest, run_method

PROJECT = Path(__file__).resolve().parents[2]

PROBE = '''
import torch
from harness.confined.context import ContractError
from tests.runner.tiny_model import Bigram


def main(ctx):
    try:
        windows = ctx.fitness_windows()
        ctx.log(fitness_sum=int(windows.sum()), fitness_shape=list(windows.shape))
    except ContractError as exc:
        ctx.log(fitness_error=str(exc))
    try:
        ctx.set_ensemble("prior")
        ctx.log(prior="accepted")
    except ContractError as exc:
        ctx.log(prior=str(exc))
    ctx.log(epoch_tokens=ctx.epoch_tokens)
    next(ctx.train_stream("main", batch_size=2))
    ctx.save_snapshot(Bigram(ctx.vocab_size), "s")
'''


def write_method(folder: Path, fitness: str) -> Path:
    folder.mkdir()
    (folder / "method.toml").write_text(textwrap.dedent(f'''
        [method]
        name = "{folder.name}"
        entry = "train:main"

        [hparams]
        lr = 0.1
        {fitness}
    '''))
    (folder / "train.py").write_text(PROBE)
    return folder


def logged(run_dir: Path) -> dict:
    merged = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        merged.update(json.loads(line))
    return merged


def test_whole_documents_are_carved_until_they_hold_the_declared_tokens():
    starts = np.array([0, 10, 25, 40, 70])
    carve = plan_carve(starts, 100, 12)  # documents [0, 10) and [10, 25) hold 25 >= 12 tokens
    assert (carve.documents, carve.tokens, carve.trainable_tokens) == (2, 25, 75)
    assert plan_carve(starts, 100, 10).documents == 1  # exactly one document's worth
    assert plan_carve(starts, 100, 0).to_dict() == {"declared": 0, "documents": 0, "tokens": 0,
                                                     "trainable_tokens": 100}
    with pytest.raises(DataError, match="more than half"):
        plan_carve(starts, 100, 41)  # four documents, 70 of 100 tokens


def test_method_toml_declares_the_carve_per_track(tmp_path):
    folder = write_method(tmp_path / "m", "[fitness]\ntokens = 100\ntracks = { webtext = 300 }")
    spec, problems = check_method(folder, import_check=False)
    assert problems == []
    assert (spec.fitness_tokens("synthetic"), spec.fitness_tokens("webtext")) == (100, 300)
    bad = write_method(tmp_path / "bad", "[fitness]\ntokens = -1\nmore = 2\ntracks = { webtext = 1.5 }")
    _, problems = check_method(bad, import_check=False)
    assert any("[fitness].tokens" in p for p in problems)
    assert any("[fitness].more: unknown key" in p for p in problems)
    assert any("[fitness].tracks.webtext" in p for p in problems)


def test_the_reference_methods_declarations():
    q0, _ = check_method(PROJECT / "submissions" / "q0", import_check=False)
    single, _ = check_method(PROJECT / "submissions" / "single_model", import_check=False)
    naive, _ = check_method(PROJECT / "submissions" / "naive_ensemble", import_check=False)
    assert q0.fitness_tokens("fineweb") == 132_000
    assert single.fitness_tokens("fineweb") == naive.fitness_tokens("fineweb") == 0


def test_a_method_that_declares_no_carve_trains_on_the_whole_split(synthetic_data, tmp_path):
    folder = write_method(tmp_path / "nocarve", "")
    run_dir = run_method(RunRequest(method_dir=folder, epochs=1.0, data_dir=synthetic_data, out=tmp_path / "r0",
                                    progress=False))
    record = json.loads((run_dir / "record.json").read_text())
    log = logged(run_dir)
    split = int(np.fromfile(synthetic_data / "train.tokens.bin", dtype=np.uint16).size)
    assert log["epoch_tokens"] == record["metered"]["epoch_tokens"] == split  # 100% of the training tokens
    assert record["fitness_carve"] == {"declared": 0, "documents": 0, "tokens": 0, "trainable_tokens": split}
    assert "carves no fitness" in log["fitness_error"]
    assert "declare them in method.toml" in log["prior"]


def test_the_carve_comes_out_of_that_methods_tokens_only(synthetic_data, tmp_path):
    declared = 3000
    folder = write_method(tmp_path / "carver", f"[fitness]\ntokens = {declared}")
    run_dir = run_method(RunRequest(method_dir=folder, epochs=1.0, data_dir=synthetic_data, out=tmp_path / "r1",
                                    progress=False))
    record = json.loads((run_dir / "record.json").read_text())
    log = logged(run_dir)
    # an independent reading of the prepared split: its document starts and tokens
    tokens = np.fromfile(synthetic_data / "train.tokens.bin", dtype=np.uint16)
    starts = np.fromfile(synthetic_data / "train.docs.bin", dtype=np.int64)
    documents = int(np.sum(starts < declared))
    carved = int(starts[documents])
    assert carved >= declared and starts[documents - 1] < declared
    assert record["fitness_carve"] == {"declared": declared, "documents": documents, "tokens": carved,
                                       "trainable_tokens": tokens.size - carved}
    assert log["epoch_tokens"] == record["metered"]["epoch_tokens"] == tokens.size - carved
    seq_len = record["track"]["seq_len"]
    n = carved // (seq_len + 1)
    expected = tokens[: n * (seq_len + 1)].reshape(n, seq_len + 1)
    assert log["fitness_shape"] == [n, seq_len + 1] and log["fitness_sum"] == int(expected.astype(np.int64).sum())
    assert log["prior"] == "accepted"
    # beside the full-window loss, the loss over Slowrun's timed-track window subset, labelled as such
    subset = record["result"]["timed_subset"]
    windows = record["track"]["val_tokens"] // (seq_len + 1)
    assert (subset["of"], subset["windows"], subset["batch_x_world"]) == (windows, windows // 32 * 32, 32)
    # the prepared data is the same for every method: its own default carve is untouched
    manifest = json.loads((synthetic_data / "manifest.json").read_text())
    assert manifest["fitness"]["tokens"] != carved


def test_single_model_trains_on_every_training_token(synthetic_data, tmp_path):
    """The reference single model declares no carve: on a track whose prepared data records a default carve
    (as fineweb's 1M tokens), one epoch is the whole training split."""
    run_dir = run_method(RunRequest(
        method_dir=PROJECT / "submissions" / "single_model", epochs=1.0, data_dir=synthetic_data,
        out=tmp_path / "single", progress=False,
        overrides=(("d_model", "32"), ("n_layer", "1"), ("n_head", "2"), ("warmup_steps", "2"))))
    record = json.loads((run_dir / "record.json").read_text())
    manifest = json.loads((synthetic_data / "manifest.json").read_text())
    assert manifest["fitness"]["tokens"] > 0  # the prepared data's own default carve ...
    assert record["status"] == "ok"
    assert record["metered"]["epoch_tokens"] == manifest["splits"]["train"]["tokens"]  # ... is not taken
    assert record["fitness_carve"]["tokens"] == 0


def test_the_carve_is_capped_at_slowruns_own_share_or_32_windows():
    """Fitness windows are held without the meter, so the carve is at most PR #90's 132,000 of fineweb's
    100M tokens (0.132%), scaled to the split, or 32 windows on a small track."""
    from harness.data.fitness import carve_cap

    assert carve_cap(100_000_000, 2048) == 132_000  # fineweb: exactly Slowrun's q0 carve
    assert carve_cap(65_536, 128) == 32 * 128  # synthetic: the floor
    assert carve_cap(1_000_000_000, 2048) == 1_320_000
    starts = np.arange(0, 100_000_000, 1000)
    assert plan_carve(starts, 100_000_000, 132_000, 2048).tokens == 132_000
    with pytest.raises(DataError, match="over the cap of 132,000"):
        plan_carve(starts, 100_000_000, 132_001, 2048)
    with pytest.raises(DataError, match="over the cap of 4,096"):
        plan_carve(np.arange(0, 65_536, 100), 65_536, int(0.49 * 65_536), 128)  # the 49% carve of the attack
