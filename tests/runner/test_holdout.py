"""`slowrun leaderboard add --verify --test-data DIR`: a real run's final predictor scored on a held-out test split.

Expected numbers are computed independently: each snapshot's model is rebuilt and run in float64 on the test
windows read straight from the test split's file, mixed with the ensemble's weights by hand, and the standard
errors are taken over the windows' mean losses.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from harness.data.holdout import compute_split_hash, prepare_test_split, read_test_manifest
from harness.data.store import TokenStore
from harness.formats.records import load_record
from harness.formats.snapshots import list_snapshots, load_snapshot_model
from harness.rules.tracks import BUILTIN_TRACKS
from harness.run.reverify import Reverifier
from leaderboard.cli import main
from leaderboard.site import build_site
from tests.leaderboard.html_tables import parse_boards
from tests.runner.test_evaluation import TWO_SNAPSHOTS, float64_logp
from tests.runner.test_runs import run

SEQ = 128


def window_se(logp: np.ndarray) -> float:
    losses = -logp.reshape(-1, SEQ).mean(axis=1)
    return float(np.std(losses, ddof=1) / math.sqrt(losses.size))


@pytest.fixture(scope="module")
def held_out(synthetic_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("held-out") / "synthetic-test"
    prepare_test_split(BUILTIN_TRACKS["synthetic"], synthetic_data, folder, progress=False, log=lambda _: None)
    return folder


def test_verify_files_the_ensembles_test_loss_and_the_board_shows_it(make_method, synthetic_data, held_out,
                                                                     tmp_path, capsys):
    run_dir, record = run(make_method(TWO_SNAPSHOTS), synthetic_data, epochs=3.0)
    assert record["status"] == "ok" and record["ensemble"]["source"] == "method"
    records = tmp_path / "records"
    assert main(["leaderboard", "add", str(run_dir), "--records", str(records), "--verify", "--data",
                 str(synthetic_data), "--test-data", str(held_out)]) == 0, capsys.readouterr().err
    filed = load_record(next(records.rglob("*.json")))
    test, manifest = filed["test"], read_test_manifest(held_out)
    assert filed["schema_version"] == 3 and filed["verified"]["kind"] == "re-evaluated"
    assert {k: v for k, v in filed.items() if k not in ("test", "verified", "schema_version")} == {
        k: v for k, v in record.items() if k != "schema_version"}  # nothing else of the record changed

    tokens = np.fromfile(held_out / "test.tokens.bin", dtype=np.uint16)
    windows = tokens[: (tokens.size // (SEQ + 1)) * (SEQ + 1)].reshape(-1, SEQ + 1)
    val_windows = TokenStore.open(synthetic_data, "val").windows(SEQ)
    models = {snap.tag: load_snapshot_model(snap) for snap in list_snapshots(run_dir / "snapshots")}
    weights = {m["tag"]: m["weight"] for m in record["ensemble"]["members"]}
    assert weights == {"first": 0.3, "second": 0.7}

    def mixed(windows):
        return np.log(sum(w * np.exp(float64_logp(models[tag], windows)) for tag, w in weights.items()))

    test_mix, val_mix = mixed(windows), mixed(val_windows)
    assert test["loss"] == pytest.approx(-test_mix.mean(), rel=1e-5)
    assert test["loss_se"] == pytest.approx(window_se(test_mix), rel=1e-4)
    assert test["val_loss_se"] == pytest.approx(window_se(val_mix), rel=1e-4)
    assert -val_mix.mean() == pytest.approx(record["result"]["val_loss"], rel=1e-5)  # the same predictor
    assert (test["tokens"], test["windows"]) == (254 * SEQ, 254)
    assert test["split_hash"] == manifest["split_hash"] and test["bpb"] is None  # synthetic: no bytes
    assert test["selection"] == "contiguous"  # no --test-key: the next tokens of the stream
    assert test["loss"] > manifest["best_loss"]  # the true language's loss on these windows is a floor

    # the same run as a submission bundle whose weights are fetched from a URL: verified in a folder made for the
    # call, scored once in the checking pass, and filed with the same test score
    bundle = tmp_path / "bundle"
    assert main(["submit", str(run_dir), "--out", str(bundle), "--weights-to", (tmp_path / "bucket").as_uri()]) == 0
    assert not list(bundle.rglob("*.safetensors")) and list((tmp_path / "bucket").rglob("*.safetensors"))
    assert main(["leaderboard", "add", str(bundle), "--records", str(tmp_path / "records-2"), "--verify", "--data",
                 str(synthetic_data), "--test-data", str(held_out), "--fetch-to", str(tmp_path / "cache"), "--fetch-local", str(tmp_path)]) == 0, (
        capsys.readouterr().err)
    assert load_record(next((tmp_path / "records-2").rglob("*.json")))["test"] == test

    report = build_site(records, tmp_path / "site", workers=1)
    assert report.refused == ()
    board = parse_boards((tmp_path / "site" / "index.html").read_text(encoding="utf-8"))[0]
    assert board.headers[2:4] == ["Val loss", "Test loss"]
    assert board.column("Test loss")[0].split()[0] == f"{test['loss']:.4f}"
    entry = next((tmp_path / "site" / "e").glob("*.html")).read_text(encoding="utf-8")
    assert manifest["split_hash"][:12] in entry and f"split hash {manifest['split_hash']}" in entry


def test_a_test_split_of_other_data_is_refused_before_any_scoring(make_method, synthetic_data, held_out,
                                                                   tmp_path, monkeypatch):
    run_dir, record = run(make_method(TWO_SNAPSHOTS), synthetic_data, epochs=3.0)

    def no_scoring(*args, **kwargs):
        raise AssertionError("a refused test split must be refused before the snapshots are scored")

    monkeypatch.setattr("harness.eval.evaluation.evaluate_run", no_scoring)

    def edited(name: str, change, rehash: bool = True) -> str:
        """A copy of the test split whose manifest says something else (its split hash made to match)."""
        folder = tmp_path / name
        shutil.copytree(held_out, folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        change(manifest)
        if rehash:
            manifest["split_hash"] = compute_split_hash(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return str(folder)

    cases = {
        edited("track", lambda m: m["track"].update(name="webtext")): "is a test split of track 'webtext'",
        edited("tokenizer", lambda m: m["tokenizer"].update(hash="0" * 64)): "another tokenizer",
        edited("vocabulary", lambda m: m["tokenizer"].update(vocab_size=2048)): "another tokenizer",
        edited("follows", lambda m: m["follows"].update(data_hash="f" * 64)): "follows data ffffffffffff",
        edited("windows", lambda m: m.update(seq_len=64)): "windows of 65",
        str(synthetic_data): "a prepared track's folder, not a test split",
        str(tmp_path / "missing"): "no manifest",
    }
    for folder, expected in cases.items():
        checker = Reverifier(data_dir=synthetic_data, test_data=folder)
        problems = checker.verify(run_dir, record)
        assert len(problems) == 1 and expected in problems[0], (folder, problems)
        assert checker.sections == {}
    # a manifest edited without its split hash (to pass another split off as this one) is refused as damaged
    forged = edited("forged", lambda m: m["follows"].update(documents=1), rehash=False)
    problems = Reverifier(data_dir=synthetic_data, test_data=forged).verify(run_dir, record)
    assert len(problems) == 1 and "split_hash does not match" in problems[0]


PRIOR = """
torch.manual_seed(ctx.seed)
for name, lr in (("first", 4.0), ("second", 4.0)):  # as good as each other, on streams of their own
    model = Bigram(ctx.vocab_size)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    stream = ctx.train_stream(name, batch_size=16)
    for _ in range(40):
        step(model, opt, *next(stream))
    ctx.save_snapshot(model, name)
ctx.set_ensemble("prior")
"""


def test_the_test_split_is_scored_with_the_prior_the_verifier_refit_not_the_records_weights(
        make_method, synthetic_data, held_out):
    """With `set_ensemble("prior")` the record's weights are the submitter's account of the prior: they are only
    checked to give its validation loss to the tolerance, and weights that do so could still have been picked
    on a test split. The test loss is the mixture with the weights the verifier refit itself."""
    folder = make_method(PRIOR, name="prior")
    (folder / "method.toml").write_text((folder / "method.toml").read_text() + "\n[fitness]\ntokens = 2000\n")
    run_dir, record = run(folder, synthetic_data, epochs=3.0)
    assert record["status"] == "ok" and record["ensemble"]["source"] == "prior"
    refit = record["ensemble"]["members"]
    assert len(refit) == 1  # two models as good as each other: the prior keeps one of them

    # 5% of the weight moved to the other snapshot: the validation loss still agrees to the tolerance
    other = ({"first", "second"} - {refit[0]["tag"]}).pop()
    tampered = json.loads(json.dumps(record))
    tampered["ensemble"]["members"] = [{**refit[0], "weight": 0.95}, {**refit[0], "tag": other, "weight": 0.05}]
    honest, checker = (Reverifier(data_dir=synthetic_data, test_data=held_out) for _ in range(2))
    assert honest.verify(run_dir, record) == [] and checker.verify(run_dir, tampered) == []
    assert checker.test_section(run_dir, tampered) == honest.test_section(run_dir, record)

    # independently, in float64: the filed loss is the refit prior's, and the tampered weights' is another
    tokens = np.fromfile(held_out / "test.tokens.bin", dtype=np.uint16)
    windows = tokens[: (tokens.size // (SEQ + 1)) * (SEQ + 1)].reshape(-1, SEQ + 1)
    models = {snap.tag: load_snapshot_model(snap) for snap in list_snapshots(run_dir / "snapshots")}
    logp = {tag: float64_logp(model, windows) for tag, model in models.items()}

    def loss(members):
        return -np.log(sum(m["weight"] * np.exp(logp[m["tag"]]) for m in members)).mean()

    filed = honest.test_section(run_dir, record)["loss"]
    assert filed == pytest.approx(loss(refit), rel=1e-6)
    assert loss(tampered["ensemble"]["members"]) != pytest.approx(filed, rel=1e-6)
