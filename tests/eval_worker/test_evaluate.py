"""Evaluation through the worker, end to end: scores equal the in-process float64 computation, and every
way a snapshot can be unusable makes it invalid, with its reason, while the others are still scored."""

from __future__ import annotations

import hashlib
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness.eval.remote_model import InvalidSnapshot, RemoteModel
from harness.eval.evaluation import EvaluationOptions, evaluate_run, start_worker
from harness.eval.logprobs import save_logprobs
from harness.eval.probes import ProbeSettings
from harness.sandbox import landlock_abi
from harness.formats.snapshots import WEIGHTS, list_snapshots
from tests.eval_worker.conftest import (SEQ_LEN, VOCAB, add_snapshot, causal_model, reference_logp,
                                        stamp_weights_hash, val_windows)

needs_landlock = pytest.mark.skipif(landlock_abi() == 0, reason="Landlock is unavailable on this kernel, so the "
                                    "worker runs unconfined and cannot be shown to be refused a file")


def evaluate(run_dir, data, method_dir, ensemble=None, first_worker=None, fitness_docs=None, **kw):
    kw.setdefault("probes", ProbeSettings(seed=11))
    options = EvaluationOptions(batch_size=16, progress=False, method_dir=method_dir, builder_roots=(), **kw)
    return evaluate_run(run_dir, data, SEQ_LEN, ensemble, None, options, first_worker=first_worker,
                        fitness_docs=fitness_docs)


def invalid_reasons(result) -> dict[str, str]:
    return {row["tag"]: row["reason"] for row in result["invalid_snapshots"]}


def test_a_model_defined_in_the_method_folder_scores_as_in_process_float64(run_dir, method_dir, synthetic_data):
    add_snapshot(run_dir, "a", causal_model(1), train_tokens=100)
    add_snapshot(run_dir, "b", causal_model(2), train_tokens=200)
    result = evaluate(run_dir, synthetic_data, method_dir, ensemble={"a": 0.25, "b": 0.75})
    assert result["invalid_snapshots"] == []
    windows = val_windows(synthetic_data)
    ref = {tag: reference_logp(run_dir, tag, windows) for tag in ("a", "b")}
    rows = {r["tag"]: r for r in result["snapshots"]}
    for tag, logp in ref.items():
        assert math.isclose(rows[tag]["val_loss"], -logp.mean(), rel_tol=1e-6)
        cached = np.load(run_dir / "eval" / f"{tag}.val.npy")
        np.testing.assert_allclose(cached, logp, rtol=0, atol=2e-5)
    mixed = np.log(0.25 * np.exp(ref["a"]) + 0.75 * np.exp(ref["b"]))
    assert math.isclose(result["result"]["val_loss"], -mixed.mean(), rel_tol=1e-6)


def test_unusable_snapshots_are_listed_with_their_reason_and_the_rest_still_counts(run_dir, method_dir,
                                                                                  synthetic_data):
    add_snapshot(run_dir, "good", causal_model(1), train_tokens=100)
    add_snapshot(run_dir, "eval", causal_model(2), builder="builtins:eval", train_tokens=200)
    add_snapshot(run_dir, "shell", causal_model(3), builder="os:system", train_tokens=300)
    add_snapshot(run_dir, "crash", causal_model(4), builder="mymodel:build_crash", train_tokens=400)
    add_snapshot(run_dir, "short", causal_model(5), builder="mymodel:build_short", train_tokens=500)
    nan_model = causal_model(6)
    with torch.no_grad():
        nan_model.head.bias[3] = float("nan")
    add_snapshot(run_dir, "nan", nan_model, train_tokens=600)
    add_snapshot(run_dir, "loud", causal_model(7), builder="mymodel:build_loud", train_tokens=700)
    result = evaluate(run_dir, synthetic_data, method_dir, ensemble={"good": 0.5, "crash": 0.3, "nan": 0.2})
    reasons = invalid_reasons(result)
    assert set(reasons) == {"eval", "shell", "crash", "short", "nan", "loud"}
    assert reasons["loud"].endswith("ValueError: ?[2J?[31mcleared your terminal")  # no escapes reach a terminal
    assert "builder 'builtins:eval' is refused" in reasons["eval"]
    assert "builder 'os:system' is refused" in reasons["shell"]
    assert "crashed (exit code 3)" in reasons["crash"]
    assert "shape [16, 127, 512] for input [16, 128]" in reasons["short"]
    assert "non-finite" in reasons["nan"]
    assert [r["epochs"] for r in result["invalid_snapshots"]] == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    # the method's ensemble loses its invalid members and is renormalised over the rest: "good" alone
    assert [r["tag"] for r in result["snapshots"]] == ["good"]
    assert result["ensemble"] == {"members": [{"tag": "good", "weight": 1.0}], "source": "method"}
    good = reference_logp(run_dir, "good", val_windows(synthetic_data))
    assert math.isclose(result["result"]["val_loss"], -good.mean(), rel_tol=1e-6)
    assert all(m["members"] == ["good"] for m in result["curve"])
    assert not any((run_dir / "eval" / f"{tag}.val.npy").exists() for tag in reasons)  # nothing cached


def test_an_ensemble_of_invalid_snapshots_only_has_no_result(run_dir, method_dir, synthetic_data):
    add_snapshot(run_dir, "good", causal_model(1), train_tokens=100)
    add_snapshot(run_dir, "bad", causal_model(2), builder="subprocess:run", train_tokens=200)
    result = evaluate(run_dir, synthetic_data, method_dir, ensemble={"bad": 1.0})
    assert "builder 'subprocess:run' is refused" in invalid_reasons(result)["bad"]
    assert result["result"] is None and result["ensemble"]["members"] == []
    assert [r["tag"] for r in result["snapshots"]] == ["good"]


def test_a_run_whose_every_snapshot_is_invalid_still_gives_an_evaluation(run_dir, method_dir, synthetic_data):
    add_snapshot(run_dir, "only", causal_model(1), builder="builtins:eval")
    result = evaluate(run_dir, synthetic_data, method_dir)
    assert result["result"] is None and result["snapshots"] == [] and list(invalid_reasons(result)) == ["only"]


def test_a_model_that_sees_the_future_fails_the_causality_probe(run_dir, method_dir, synthetic_data):
    add_snapshot(run_dir, "peeks", causal_model(1), builder="mymodel:build_peeks")
    result = evaluate(run_dir, synthetic_data, method_dir)
    assert "causality probe failed" in invalid_reasons(result)["peeks"]
    assert result["result"] is None


@pytest.mark.parametrize("builder", ["mymodel:build_remembers", "mymodel:build_prefix_memory"])
def test_a_model_with_memory_scores_its_honest_loss_on_a_cpu(builder, run_dir, method_dir, synthetic_data):
    """Every batch runs in a fresh fork of the loaded model, so what the model's code remembers (how often
    it saw a window, the token that followed each prefix) is gone before the next batch: it scores exactly
    what its weights score. (On a GPU there is no fork; the statelessness probe is tested in test_probes.)"""
    add_snapshot(run_dir, "memory", causal_model(1), builder=builder)
    result = evaluate(run_dir, synthetic_data, method_dir)
    if builder.endswith("prefix_memory"):
        # Within one batch it still remembers: the causality probe's copy of a window, in the same batch as
        # the original, meets the original's next token at its cut, and the probe refuses it.
        assert "causality probe failed" in invalid_reasons(result)["memory"]
        return
    assert result["invalid_snapshots"] == []
    honest = -reference_logp(run_dir, "memory", val_windows(synthetic_data)).mean()
    assert math.isclose(result["snapshots"][0]["val_loss"], honest, rel_tol=0, abs_tol=1e-5)
    assert result["snapshots"][0]["evaluated_by"] == "method code"


def test_weights_changed_after_the_snapshot_was_taken_in_are_refused(run_dir, method_dir, synthetic_data):
    snap = add_snapshot(run_dir, "tampered", causal_model(1))
    weights = snap.folder / WEIGHTS
    stamp_weights_hash(snap.folder, hashlib.sha256(weights.read_bytes()).hexdigest())
    add_snapshot(run_dir, "other", causal_model(2), train_tokens=50)
    weights.write_bytes((run_dir / "snapshots" / "other" / WEIGHTS).read_bytes())  # a better model swapped in
    result = evaluate(run_dir, synthetic_data, method_dir)
    assert "weights sha256 mismatch" in invalid_reasons(result)["tampered"]
    assert [r["tag"] for r in result["snapshots"]] == ["other"]


def test_stamped_weights_that_match_are_scored(run_dir, method_dir, synthetic_data):
    snap = add_snapshot(run_dir, "stamped", causal_model(1))
    stamp_weights_hash(snap.folder, hashlib.sha256((snap.folder / WEIGHTS).read_bytes()).hexdigest())
    result = evaluate(run_dir, synthetic_data, method_dir)
    assert result["invalid_snapshots"] == [] and result["result"] is not None


@needs_landlock
def test_the_model_code_cannot_read_the_validation_tokens(run_dir, method_dir, synthetic_data):
    val_file = next(p for p in sorted(synthetic_data.rglob("*")) if p.is_file() and "val" in p.name)
    with open(val_file, "rb") as handle:  # readable here, by the harness
        assert handle.read(1) is not None
    add_snapshot(run_dir, "reader", causal_model(1), builder="mymodel:build_reader", config={"path": str(val_file)})
    result = evaluate(run_dir, synthetic_data, method_dir)
    reason = invalid_reasons(result)["reader"]
    assert "PermissionError" in reason and str(val_file) in reason


def test_a_worker_that_runs_past_its_time_limit_is_invalid(run_dir, method_dir, synthetic_data):
    add_snapshot(run_dir, "sleeper", causal_model(1), builder="mymodel:build_sleeper")
    result = evaluate(run_dir, synthetic_data, method_dir, timeout_s=8.0)
    assert "timed out (per-snapshot limit 8 s)" in invalid_reasons(result)["sleeper"]


def test_a_forged_cache_is_ignored_and_a_trusted_one_is_reused(run_dir, method_dir, synthetic_data):
    add_snapshot(run_dir, "a", causal_model(1))
    windows = val_windows(synthetic_data)
    cache = run_dir / "eval"
    forged = np.full((len(windows), SEQ_LEN), -3.0 / 1000, np.float32)  # a val loss of 0.003
    save_logprobs(cache / "a.val.npy", forged)
    save_logprobs(cache / "a.fit.npy", np.zeros((0, SEQ_LEN), np.float32))
    truth = -reference_logp(run_dir, "a", windows).mean()
    result = evaluate(run_dir, synthetic_data, method_dir)
    assert math.isclose(result["snapshots"][0]["val_loss"], truth, rel_tol=1e-6)
    stamp = json.loads((cache / "a.sha256").read_text())
    assert stamp["val_sha256"] == hashlib.sha256((cache / "a.val.npy").read_bytes()).hexdigest()

    # The harness's own cache is reused as is (no worker: the builder now crashes, yet the score stands).
    spec_path = run_dir / "snapshots" / "a" / "spec.json"
    spec = json.loads(spec_path.read_text())
    spec_path.write_text(json.dumps({**spec, "builder": "mymodel:build_crash"}))
    again = evaluate(run_dir, synthetic_data, method_dir)
    assert again["invalid_snapshots"] == [] and again["snapshots"][0]["val_loss"] == result["snapshots"][0]["val_loss"]

    # A cache edited after it was written, even with a sidecar re-stamped for it, but whose weights hash is
    # not the snapshot's, is recomputed (here: the crashing builder runs and the snapshot is invalid).
    save_logprobs(cache / "a.val.npy", forged)
    stamp["val_sha256"] = hashlib.sha256((cache / "a.val.npy").read_bytes()).hexdigest()
    stamp["weights_sha256"] = "0" * 64
    (cache / "a.sha256").write_text(json.dumps(stamp))
    forged_again = evaluate(run_dir, synthetic_data, method_dir)
    assert "crashed" in invalid_reasons(forged_again)["a"]


def test_remote_model_refuses_logits_smaller_than_the_vocabulary(run_dir, method_dir):
    add_snapshot(run_dir, "a", causal_model(1))
    snap = list_snapshots(run_dir / "snapshots")[0]
    with RemoteModel(snap, method_dir=method_dir, builder_roots=(), vocab_size=VOCAB + 1) as model:
        with pytest.raises(InvalidSnapshot, match="512 logits per position; the track's vocabulary has 513"):
            model(torch.zeros((2, 5), dtype=torch.long))


def test_a_worker_that_cannot_enter_a_required_sandbox_says_so(run_dir, method_dir, monkeypatch):
    add_snapshot(run_dir, "a", causal_model(1))
    snap = list_snapshots(run_dir / "snapshots")[0]
    monkeypatch.setenv("SLOWRUN_SANDBOX", "off")  # passed on to the worker, which must then refuse to run
    with pytest.raises(InvalidSnapshot, match="SandboxError: a sandbox is required but SLOWRUN_SANDBOX=off"):
        with RemoteModel(snap, method_dir=method_dir, builder_roots=(), require_sandbox=True):
            pass


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_logits_arrive_bit_for_bit(run_dir, method_dir, dtype):
    add_snapshot(run_dir, "a", causal_model(1))
    snap = list_snapshots(run_dir / "snapshots")[0]
    tokens = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(0))
    with RemoteModel(snap, method_dir=method_dir, builder_roots=(), dtype=dtype, vocab_size=VOCAB) as model:
        got = model(tokens)
    local = causal_model(1).to(getattr(torch, dtype)).eval()
    with torch.inference_mode():
        expected = local(tokens)
    assert got.dtype == getattr(torch, dtype) and torch.equal(got, expected)


def test_a_worker_started_ahead_scores_the_first_snapshot(run_dir, method_dir, synthetic_data):
    add_snapshot(run_dir, "a", causal_model(1), train_tokens=100)
    add_snapshot(run_dir, "b", causal_model(2), train_tokens=200)
    ahead = start_worker("cpu", method_dir=method_dir, builder_roots=())
    assert ahead.snapshot is None
    result = evaluate(run_dir, synthetic_data, method_dir, first_worker=ahead, prefetch=False)
    assert ahead.snapshot is not None and ahead.snapshot.tag == "a" and ahead._sock is None  # used, then closed
    windows = val_windows(synthetic_data)
    for row in result["snapshots"]:
        assert math.isclose(row["val_loss"], -reference_logp(run_dir, row["tag"], windows).mean(), rel_tol=1e-6)


def test_a_worker_started_ahead_is_closed_when_there_is_nothing_to_score(run_dir, method_dir, synthetic_data):
    ahead = start_worker("cpu", method_dir=method_dir, builder_roots=())
    assert evaluate(run_dir, synthetic_data, method_dir, first_worker=ahead)["result"] is None
    assert ahead._sock is None and ahead._private is None


def test_a_run_with_more_snapshots_than_curve_points_reports_a_thinned_curve(run_dir, method_dir, synthetic_data,
                                                                           monkeypatch):
    import harness.eval.prior.sweeps

    monkeypatch.setattr(harness.eval.prior.sweeps, "CURVE_POINTS", 3)
    for i in range(5):
        add_snapshot(run_dir, f"s{i}", causal_model(i), train_tokens=100 * (i + 1))
    result = evaluate(run_dir, synthetic_data, method_dir, "prior")
    assert len(result["snapshots"]) == 5
    # From 1 epoch, two points left over log(5): the first stamp >= e^(log 5 / 2) = 2.24 is 3; then 5.
    assert [p["epochs"] for p in result["curve"]] == [1.0, 3.0, 5.0]
    last = result["curve"][-1]  # the whole run: the full prior (the K sweep's last point), or the best single
    if last["choice"] == "prior":
        # (both certified to the prior tolerance, 1e-8 on fitness, by different paths)
        assert last["val_loss"] == pytest.approx(result["k_sweep"][-1]["val_loss"], abs=1e-6)
    else:
        best = min(result["snapshots"], key=lambda r: r["fitness_loss"])
        assert last["members"] == [best["tag"]] and last["val_loss"] == best["val_loss"]


def test_a_model_slow_in_forward_meets_the_limit_of_the_rule(run_dir, method_dir, synthetic_data, monkeypatch):
    """With no fixed limit, a snapshot's limit is the rule's: START_S plus 4 FLOPs per parameter and token
    (a quarter more for the probes) at the device's floor. START_S is shrunk so the test waits seconds."""
    import harness.eval.limits as eval_limits
    from harness.eval.evaluation import open_eval_data

    monkeypatch.setattr(eval_limits, "START_S", 3.0)
    model = causal_model(1)
    add_snapshot(run_dir, "slow", model, builder="mymodel:build_slow_forward")
    result = evaluate(run_dir, synthetic_data, method_dir)
    data = open_eval_data(synthetic_data, SEQ_LEN)
    tokens = (len(data.val_windows) + len(data.fit_windows)) * SEQ_LEN
    params = sum(p.numel() for p in model.state_dict().values())
    expected = 3.0 + 4 * params * tokens * 1.25 / 1e9
    assert f"timed out (per-snapshot limit {expected:g} s)" in invalid_reasons(result)["slow"]


def test_the_whole_evaluation_ends_at_its_limit(run_dir, method_dir, synthetic_data):
    """--eval-timeout bounds the whole: the slow first snapshot gets only what is left, and the snapshots
    after it are listed as not scored, with that reason (a trusted cache is still used after it)."""
    import time

    add_snapshot(run_dir, "a", causal_model(1), train_tokens=100)
    evaluate(run_dir, synthetic_data, method_dir)  # a's cache: trusted, it needs no worker later
    add_snapshot(run_dir, "b", causal_model(2), builder="mymodel:build_slow_forward", train_tokens=200)
    add_snapshot(run_dir, "c", causal_model(3), train_tokens=300)
    started = time.monotonic()
    result = evaluate(run_dir, synthetic_data, method_dir, eval_timeout_s=6.0, prefetch=False)
    assert time.monotonic() - started < 60  # (the slow forward sleeps 600 s)
    reasons = invalid_reasons(result)
    assert "timed out" in reasons["b"]
    assert reasons["c"] == ("not scored: the evaluation's limit of 6 s (--eval-timeout) had passed before its "
                            "turn")
    assert [row["tag"] for row in result["snapshots"]] == ["a"]


def test_eval_limits_count_parameters_and_cut_to_what_is_left(monkeypatch):
    """The parameter count read from the safetensors header equals torch's; a hand-worked limit; a limit
    on the whole cuts each snapshot's to what is left of it."""
    from safetensors.torch import save

    from harness.eval.limits import EvalLimits, parameter_count, snapshot_limit_s

    tensors = {"w": torch.zeros(3, 5), "b": torch.zeros(7, dtype=torch.bfloat16), "s": torch.zeros(())}
    blob = save(tensors)
    assert parameter_count(blob) == 15 + 7 + 1
    assert parameter_count(b"not safetensors at all") == len(b"not safetensors at all")
    # 600 + 4 * 1e6 * 2e5 * 1.25 / 1e9 = 600 + 1000; on CUDA the floor is 1e13
    assert snapshot_limit_s(1_000_000, 200_000, "cpu") == pytest.approx(1600.0)
    assert snapshot_limit_s(1_000_000, 200_000, "cuda:3") == pytest.approx(600.1)
    assert EvalLimits(per_snapshot_s=5.0).start().snapshot_s(blob, 10**9, "cpu") == 5.0
    from harness.eval import limits

    now = [1000.0]
    monkeypatch.setattr(limits, "time", SimpleNamespace(monotonic=lambda: now[0]))  # the test's clock
    whole = EvalLimits(total_s=30.0).start()
    now[0] += 12.5
    assert whole.snapshot_s(blob, 10, "cpu") == pytest.approx(17.5)  # what is left of the whole
    with pytest.raises(ValueError, match="positive number of seconds"):
        EvalLimits(total_s=0)
    with pytest.raises(ValueError, match="positive number of seconds"):
        EvalLimits(per_snapshot_s=float("nan"))
