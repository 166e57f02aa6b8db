"""score_downstream end to end on the real splits, against scores recomputed from the models in float64."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.data.manifest import FORMAT, MANIFEST
from harness.data.tokenizers import ByteBpeTokenizer, Gpt2Tokenizer
from harness.eval.downstream import (DownstreamNotApplicable, downstream_average, score_downstream, score_snapshots,
                                track_tokenizer)
from harness.eval.downstream.limits import DocumentLimits
from harness.eval.downstream.splits import DownstreamData, SplitFile
from harness.errors import DataError, SlowrunError
from harness.formats.snapshots import list_snapshots, write_snapshot
from tests.downstream.conftest import SEQ_LEN, brute_force_score, token_pair


def prompts(name: str, row: dict) -> tuple[str, list[str], int]:
    """Context, choices and gold index of a raw row, written out from lm-eval's published templates."""
    if name == "piqa":
        return f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], int(row["label"])
    if name == "arc_easy":
        labels = row["choices"]["label"]
        return f"Question: {row['question']}\nAnswer:", row["choices"]["text"], labels.index(row["answerKey"])
    raise AssertionError(name)


def expected_scores(name, rows, models, weights, tokenizer) -> dict:
    acc, acc_norm = [], []
    for row in rows:
        context, choices, gold = prompts(name, row)
        lls = np.array([brute_force_score(models, weights, *token_pair(tokenizer, context, " " + choice), SEQ_LEN)[0]
                        for choice in choices])
        acc.append(float(np.argmax(lls) == gold))
        acc_norm.append(float(np.argmax(lls / np.array([len(c) for c in choices])) == gold))
    n = len(rows)
    stderr = lambda xs: math.sqrt(np.var(xs, ddof=1) / n)  # noqa: E731 - standard error of a mean
    return {"acc": np.mean(acc), "acc_stderr": stderr(acc), "acc_norm": np.mean(acc_norm),
            "acc_norm_stderr": stderr(acc_norm), "n": n}


def assert_scores(got: dict, expected: dict):
    assert set(got) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "split", "split_rows",
                        "published_rows", "source", "provenance"}
    assert got["n"] == expected["n"]
    for key in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


def test_single_model_scores_match_a_direct_computation(shared_data, tokenizer, model):
    data = shared_data("downstream")
    lines = data.joinpath("piqa", "piqa_validation.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines[:12]]
    got = score_downstream([model], tokenizer=tokenizer, seq_len=SEQ_LEN, tasks=("piqa",), data_dir=data,
                           limit=12, batch_size=5)
    assert list(got) == ["piqa"]
    assert_scores(got["piqa"], expected_scores("piqa", rows, [model], [1.0], tokenizer))


def test_snapshot_ensemble_scores_match_the_probability_mixture(shared_data, tmp_path, tokenizer, model,
                                                                   other_model):
    data = shared_data("downstream")
    for tag, member in (("a", model), ("b", other_model)):
        write_snapshot(tmp_path / "snapshots", tag, member, member.build_spec(), 1.0, 100, {})
    snapshots = list_snapshots(tmp_path / "snapshots")
    lines = data.joinpath("arc_easy", "ARC-Easy-test.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines[:10]]
    weights = [0.25, 0.75]
    got = score_snapshots(snapshots, weights, tokenizer=tokenizer, seq_len=SEQ_LEN, tasks=("arc_easy",),
                          data_dir=data, limit=10, batch_size=7)
    assert_scores(got["arc_easy"], expected_scores("arc_easy", rows, [model, other_model], weights, tokenizer))


def test_average_is_the_unweighted_mean_over_tasks():
    scores = {"arc_easy": {"acc": 0.5, "acc_norm": 0.25, "n": 2376}, "piqa": {"acc": 0.75, "acc_norm": 0.5, "n": 1838},
              "sciq": {"acc": 1.0, "acc_norm": 0.0, "n": 1000}}
    assert downstream_average(scores) == {"acc": pytest.approx(0.75), "acc_norm": pytest.approx(0.25)}
    with pytest.raises(SlowrunError, match="no downstream scores"):
        downstream_average({})
    with pytest.raises(SlowrunError, match="not a finite number"):
        downstream_average({"piqa": {"acc": float("nan"), "acc_norm": 0.5}})


def write_manifest(folder, tokenizer_identity: dict, name: str = "t", seq_len: int = 64):
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "track": {"name": name}, "tokenizer": tokenizer_identity, "seq_len": seq_len}
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def test_synthetic_tracks_have_no_downstream_scores(tmp_path):
    write_manifest(tmp_path, {"kind": "identity", "vocab_size": 64, "bos_id": 0, "hash": "x"}, name="synthetic")
    with pytest.raises(DownstreamNotApplicable, match="'synthetic' is synthetic.*not text"):
        track_tokenizer(tmp_path)


def test_track_tokenizer_is_the_one_the_track_was_prepared_with(tmp_path, tokenizer):
    tokenizer.save(tmp_path)
    write_manifest(tmp_path, tokenizer.identity(), seq_len=128)
    loaded, seq_len = track_tokenizer(tmp_path)
    assert isinstance(loaded, ByteBpeTokenizer) and seq_len == 128
    assert loaded.encode_batch(["Metals conduct heat."]) == tokenizer.encode_batch(["Metals conduct heat."])
    other = ByteBpeTokenizer.train(["a completely different corpus of words"] * 3, 280)
    write_manifest(tmp_path, other.identity())
    with pytest.raises(DataError, match="does not match the one the track was prepared with"):
        track_tokenizer(tmp_path)


def test_gpt2_track_tokenizer_from_explicit_ranks(tmp_path, shared_data):
    ranks = shared_data("gpt2", "r50k_base.tiktoken")
    write_manifest(tmp_path, Gpt2Tokenizer(ranks).identity(), seq_len=2048)
    loaded, seq_len = track_tokenizer(tmp_path, gpt2_ranks=ranks)
    assert seq_len == 2048 and loaded.bos_id == 50256
    assert loaded.encode_batch(["Hello world"]) == [[15496, 995]]  # published GPT-2 ids


def test_scoring_uses_the_tracks_own_gpt2_ranks_or_the_flag(tmp_path, shared_data, monkeypatch):
    """Offline, with no $SLOWRUN_GPT2_RANKS: the ranks file that prepared the track (its ranks_path) is the one
    downstream scoring loads; `--gpt2-ranks` of slowrun run/eval overrides it."""
    from harness.cli import build_parser
    from harness.run.runner import downstream_gpt2_ranks
    from tests.run_specs import run_spec

    monkeypatch.delenv("SLOWRUN_GPT2_RANKS", raising=False)
    ranks = shared_data("gpt2", "r50k_base.tiktoken")
    write_manifest(tmp_path, Gpt2Tokenizer(ranks).identity(), seq_len=2048)
    spec = run_spec(track={"name": "fineweb", "seq_len": 2048, "tokenizer": {"kind": "gpt2", "ranks_path": str(ranks)}})
    loaded, _ = track_tokenizer(tmp_path, downstream_gpt2_ranks(spec))
    assert loaded.encode_batch(["Hello world"]) == [[15496, 995]]
    assert downstream_gpt2_ranks(spec.replace(gpt2_ranks="/elsewhere/ranks")) == "/elsewhere/ranks"
    for command in (["eval", "RUN"], ["run", "DIR"]):
        assert build_parser().parse_args([*command, "--gpt2-ranks", str(ranks)]).gpt2_ranks == str(ranks)


def test_run_with_downstream_puts_scores_into_the_record(shared_data, tmp_path, monkeypatch):
    """slowrun run --downstream on a small text track: the final predictor's scores reach the record,
    equal to scoring the same snapshot directly."""
    from harness.data.prepare import prepare_track
    from harness.formats.records import validate_record
    from harness.run.runner import RunRequest, run_method
    from tests.data.helpers import local_track

    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    track = local_track([shared_data("webtext", "webtext.valid.jsonl")], val_tokens=3_000, train_tokens=8_000,
                        seq_len=64, name="tinytext")
    prepared = tmp_path / "tinytext"
    prepare_track(track, prepared, progress=False)
    method = tmp_path / "m"
    method.mkdir()
    (method / "method.toml").write_text('[method]\nname = "m"\nentry = "train:main"\ntracks = ["*"]\n')
    (method / "train.py").write_text(
        "import torch\nfrom tests.runner.tiny_model import Bigram\n\n"
        "def main(ctx):\n    torch.manual_seed(0)\n    model = Bigram(ctx.vocab_size)\n"
        "    opt = torch.optim.Adam(model.parameters(), lr=0.05)\n"
        "    for x, y in ctx.train_stream('main', 8):\n"
        "        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())\n"
        "        opt.zero_grad(); loss.backward(); opt.step()\n"
        "        if ctx.remaining_epochs * ctx.epoch_tokens < 8 * ctx.seq_len:\n            break\n"
        "    ctx.save_snapshot(model, 'final')\n")
    data = shared_data("downstream")
    # SciQ's validation split from a file of its own, a document limit per task beside the global one.
    sciq_validation = tmp_path / "sciq_validation.json"
    sciq_validation.write_text(json.dumps(json.loads(data.joinpath("sciq", "sciq_test.json").read_text())[::-1]))
    files = (SplitFile("sciq", "validation", sciq_validation),)
    limits = DocumentLimits(6, (("piqa", 4),))
    run_dir = run_method(RunRequest(method_dir=method, track="tinytext", track_spec=track, epochs=1.0,
                                    data_dir=prepared, out=tmp_path / "run", progress=False, downstream=True,
                                    downstream_data=data, downstream_limit=limits, downstream_files=files))
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "ok" and validate_record(record) == []
    assert set(record["downstream"]) == {"arc_easy", "piqa", "sciq"}
    assert {task: (s["n"], s["split"]) for task, s in record["downstream"].items()} == \
        {"arc_easy": (6, "test"), "piqa": (4, "validation"), "sciq": (6, "validation")}
    tokenizer, seq_len = track_tokenizer(prepared)
    direct = score_snapshots(list_snapshots(run_dir / "snapshots"), [1.0], tokenizer=tokenizer, seq_len=seq_len,
                             data_dir=DownstreamData(data, files), limit=limits)
    assert record["downstream"] == direct
    assert record["downstream_average"] == downstream_average(direct)
