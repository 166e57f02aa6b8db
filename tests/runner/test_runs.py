"""Runs end to end: statuses, budget enforcement, and what the method's process can see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.errors import SlowrunError
from harness.formats.records import validate_record
from harness.run.runner import RunRequest, run_method

TRAIN_ONE_EPOCH = """
torch.manual_seed(ctx.seed)
model = Bigram(ctx.vocab_size)
opt = torch.optim.SGD(model.parameters(), lr=ctx.hparams["lr"])
stream = ctx.train_stream("main", batch_size=16)
while ctx.remaining_epochs * ctx.epoch_tokens >= 16 * ctx.seq_len and ctx.epochs < 1.0:
    inputs, targets = next(stream)
    ctx.log(loss=step(model, opt, inputs, targets))
ctx.save_snapshot(model, "first")
"""


def run(method, data, epochs=2.0, **kw):
    run_dir = run_method(RunRequest(method_dir=method, track="synthetic", epochs=epochs, data_dir=data,
                                    out=method.parent / f"run-{method.name}", progress=False, **kw))
    record = json.loads((run_dir / "record.json").read_text())
    assert validate_record(record) == []
    return run_dir, record


@pytest.mark.parametrize("epochs", [0.0, -1.0, float("nan"), float("inf"), 1e308, 1e6 + 1])
def test_a_budget_outside_0_to_a_million_epochs_is_refused_before_any_folder(make_method, synthetic_data, epochs):
    """1e308 epochs would overflow budget x epoch tokens to infinity inside the data server, after the run
    folder was laid out; it is refused first, with the range, and nothing is written."""
    method = make_method(TRAIN_ONE_EPOCH)
    out = method.parent / "never"
    with pytest.raises(SlowrunError, match="--epochs must be above 0 and at most 1e\\+06"):
        run_method(RunRequest(method_dir=method, track="synthetic", epochs=epochs, data_dir=synthetic_data,
                              out=out, progress=False))
    assert not out.exists()


def test_budget_exceeded_keeps_earlier_snapshots(make_method, synthetic_data):
    method = make_method(TRAIN_ONE_EPOCH + """
while True:  # one window too many, eventually
    inputs, targets = next(stream)
    step(model, opt, inputs, targets)
""")
    run_dir, record = run(method, synthetic_data, epochs=2.0)
    assert record["status"] == "budget-exceeded"
    assert "BudgetExhausted" == record["error"]["type"]
    assert record["metered"]["epochs"] <= 2.0
    # the refused batch was not served: what is left is less than one batch
    epoch_tokens = record["metered"]["epoch_tokens"]
    assert (2.0 * epoch_tokens) - record["metered"]["train_tokens"] < 16 * 128
    assert [s["tag"] for s in record["snapshots"]] == ["first"]
    assert record["result"]["val_loss"] < 6.2  # the kept snapshot was evaluated (log 512 = 6.24)


def test_streams_share_one_budget(make_method, synthetic_data):
    method = make_method("""
model = Bigram(ctx.vocab_size)
a = ctx.train_stream("a", batch_size=8)
b = ctx.train_stream("b", batch_size=8)
for _ in range(10 ** 6):
    next(a); next(b)
""")
    _, record = run(method, synthetic_data, epochs=1.0)
    assert record["status"] == "budget-exceeded"
    per_stream = record["metered"]["per_stream"]
    assert abs(per_stream["a"] - per_stream["b"]) <= 8 * 128
    assert sum(per_stream.values()) == record["metered"]["train_tokens"] <= record["metered"]["epoch_tokens"]


def test_crash_gives_failed_record_with_the_error(make_method, synthetic_data):
    method = make_method(TRAIN_ONE_EPOCH + 'raise RuntimeError("optimizer exploded on purpose")\n')
    _, record = run(method, synthetic_data, epochs=2.0)
    assert record["status"] == "failed"
    assert record["error"]["type"] == "RuntimeError"
    assert "optimizer exploded on purpose" in record["error"]["message"]
    assert "train.py" in record["error"]["traceback"]
    assert [s["tag"] for s in record["snapshots"]] == ["first"]


def test_nan_loss_stops_the_run_as_diverged(make_method, synthetic_data):
    method = make_method("""
stream = ctx.train_stream("main", batch_size=4)
next(stream)
ctx.log(loss=float("nan"))
raise AssertionError("not reached")
""")
    _, record = run(method, synthetic_data, epochs=1.0)
    assert record["status"] == "diverged"
    assert "nan" in record["error"]["message"]
    assert record["result"] is None


def test_method_whose_entry_cannot_be_imported_is_invalid(make_method, synthetic_data):
    method = make_method("pass\n")
    train = method / "train.py"
    train.write_text("import a_module_that_does_not_exist\n" + train.read_text())
    _, record = run(method, synthetic_data, epochs=1.0)
    assert record["status"] == "invalid"
    assert "cannot be imported" in record["error"]["message"]
    assert "a_module_that_does_not_exist" in record["error"]["message"]


def test_method_that_saves_nothing_is_invalid(make_method, synthetic_data):
    method = make_method("next(ctx.train_stream('main', 2))\n")
    _, record = run(method, synthetic_data, epochs=1.0)
    assert record["status"] == "invalid" and "no snapshot" in record["error"]["message"]


def test_the_method_process_never_sees_validation(make_method, synthetic_data):
    method = make_method("""
import json, os, pathlib
seen = {"attrs": {k: repr(v) for k, v in vars(ctx).items()}, "env": dict(os.environ),
        "files": sorted(str(p) for p in ctx.scratch_dir.parent.rglob("*"))}
pathlib.Path(ctx.scratch_dir / "seen.json").write_text(json.dumps(seen))
""" + TRAIN_ONE_EPOCH)
    run_dir, record = run(method, synthetic_data, epochs=2.0)
    assert record["status"] == "ok"
    seen = json.loads((run_dir / "sandbox" / "scratch" / "seen.json").read_text())
    assert not any("val" in Path(name).name for name in seen["files"])
    # nothing the context holds, nor the process environment, names the prepared data or the run's records
    for text in [*seen["attrs"].values(), *seen["env"].values()]:
        assert str(synthetic_data) not in text and "val.tokens" not in text and "run.json" not in text
    assert record["sandbox"]["kind"] == "landlock"
    # fitness windows are not training: reading them costs no epochs
    assert record["metered"]["fitness_tokens"] == 0


def test_record_carries_provenance(make_method, synthetic_data):
    method = make_method(TRAIN_ONE_EPOCH)
    _, record = run(method, synthetic_data, epochs=2.0)
    from harness.formats.method_toml import method_hash
    from harness.common.provenance import git_commit

    assert record["method"]["hash"] == method_hash(method)
    manifest = json.loads((synthetic_data / "manifest.json").read_text())
    assert record["track"]["data_hash"] == manifest["data_hash"]
    assert record["environment"]["torch"] == torch.__version__ and record["environment"]["harness_version"]
    assert record["environment"]["git_commit"] == git_commit()
    # epochs are counted against the training split minus the method's fitness carve (none declared here)
    assert record["fitness_carve"]["tokens"] == 0
    assert record["metered"]["epoch_tokens"] == manifest["splits"]["train"]["tokens"]
    # the record's epochs come from the meter, whatever the method logs
    assert abs(record["metered"]["epochs"] - record["metered"]["train_tokens"] / record["metered"]["epoch_tokens"]) < 1e-12


def test_a_harness_failure_still_ends_in_a_record(make_method, synthetic_data, tmp_path):
    import shutil

    from harness.run.runner import prepare_run, resume_run

    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    method = make_method(TRAIN_ONE_EPOCH)
    run_dir = prepare_run(RunRequest(method_dir=method, track="synthetic", epochs=1.0, data_dir=data,
                                     out=tmp_path / "run", progress=False))
    (data / "train.tokens.bin").unlink()  # the prepared split vanished between preparing and training
    with pytest.raises(Exception):
        resume_run(run_dir, progress=False)
    record = json.loads((run_dir / "record.json").read_text())
    assert validate_record(record) == []
    assert record["status"] == "failed" and record["error"]["type"] == "HarnessError"
    assert "train.tokens.bin" in record["error"]["message"]


def test_an_honest_run_is_evaluated_from_its_graph_with_a_head_start(make_method, synthetic_data, capfd):
    """The snapshot's forward is exported and run by the harness (the record says `graph`), and the first
    evaluation worker starts while the method trains (a failure to start it is said on stderr; a call
    with a wrong argument once hid there for good)."""
    run_dir, record = run(make_method(TRAIN_ONE_EPOCH), synthetic_data, epochs=1.0)
    assert record["status"] == "ok", record["error"]
    assert [row["evaluated_by"] for row in record["snapshots"]] == ["graph"]
    spec = json.loads((run_dir / "snapshots" / "first" / "spec.json").read_text())
    assert spec["graph"]["operators"] >= 1 and spec["graph"]["input_shape"] == [16, 128]
    assert "did not start ahead" not in capfd.readouterr().err
