"""Tracking: a real run's metrics and summary, read back with TensorBoard's and W&B's own readers, compared
with metrics.jsonl and record.json read here; one W&B run across sessions, no line sent twice; a tracker that
is missing or fails never costs a record."""

from __future__ import annotations

import glob
import json
import time
from pathlib import Path

import pytest

from harness.errors import SlowrunError
from harness.run import tracking as tracking_module
from harness.run.runner import RunRequest, evaluate_existing, prepare_run, run_method
from harness.run.tracking import TRACKING_DIR, Tracking, _Follower

pytest.importorskip("tensorboard", reason="tracking is an optional extra: pip install 'slowrun[tracking]'")
datastore = pytest.importorskip("wandb.sdk.internal.datastore", reason="needs wandb 0.29 (slowrun[tracking])")
from wandb.proto import wandb_internal_pb2  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

LOGGING_METHOD = """
torch.manual_seed(0)
model = Bigram(ctx.vocab_size)
opt = torch.optim.SGD(model.parameters(), lr=0.5)
stream = ctx.train_stream("main", batch_size=4)
for i in range(6):
    inputs, targets = next(stream)
    ctx.log(loss=step(model, opt, inputs, targets), lr=0.5 / (i + 1), note="text is not plotted")
ctx.save_snapshot(model, "final")
"""


def wandb_records(run_dir: Path, run_id: str) -> list[list]:
    """Each offline session's (kind, {key: value}) records, in order, read with W&B's own reader."""
    sessions = []
    for path in sorted(glob.glob(str(run_dir / TRACKING_DIR / "wandb" / "offline-run-*" / f"run-{run_id}.wandb"))):
        store = datastore.DataStore()
        store.open_for_scan(path)
        records = []
        while (data := store.scan_data()) is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "history":
                records.append(("history", {_key(i): json.loads(i.value_json) for i in record.history.item}))
            elif kind == "summary":
                records.append(("summary", {_key(i): json.loads(i.value_json) for i in record.summary.update}))
        sessions.append(records)
    return sessions


def _summarised(sessions: list[list], n: int) -> bool:
    return len(sessions) == n and all(any(kind == "summary" and "val_loss" in values for kind, values in session)
                                      for session in sessions)


def summarised_sessions(run_dir: Path, run_id: str, n: int) -> list[list]:
    """The run's `n` offline sessions once each holds its summary. W&B's own service process writes the
    offline file; on a loaded machine its last records can land after finish() returned (wandb/wandb#7227),
    so the reader waits for them, within a deadline."""
    deadline = time.monotonic() + 60
    sessions = wandb_records(run_dir, run_id)
    while not _summarised(sessions, n) and time.monotonic() < deadline:
        time.sleep(0.5)
        sessions = wandb_records(run_dir, run_id)
    return sessions


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.fixture(autouse=True)
def quiet_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setattr(tracking_module, "FOLLOW_INTERVAL_S", 0.2)


def test_a_runs_metrics_and_record_reach_both_trackers_and_a_later_session_continues_the_same_wandb_run(
        make_method, synthetic_data, tmp_path):
    method = make_method(LOGGING_METHOD)
    board = tmp_path / "tb"
    run_dir = run_method(RunRequest(method_dir=method, track="synthetic", epochs=1.0, data_dir=synthetic_data,
                                    out=tmp_path / "run", progress=False, wandb="slowrun-tests", wandb_mode="offline", tensorboard=board))
    record = json.loads((run_dir / "record.json").read_text())
    spec = json.loads((run_dir / "run.json").read_text())
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [(line["tokens"], line["loss"], line["lr"]) for line in lines if "loss" in line]
    assert record["status"] == "ok" and len(logged) == 6

    wandb_id = spec["tracking"]["wandb_id"]
    assert record["tracking"]["wandb"]["id"] == wandb_id and record["tracking"]["wandb"]["mode"] == "offline"
    assert record["tracking"]["tensorboard"]["dir"] == str(board.resolve() / record["run_id"])

    events = EventAccumulator(record["tracking"]["tensorboard"]["dir"])
    events.Reload()
    tb_loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in tb_loss] == [t for t, _, _ in logged]
    assert [v for _, v in tb_loss] == pytest.approx([loss for _, loss, _ in logged], rel=1e-6)  # stored as float32
    assert "train/note" not in events.Tags()["scalars"]
    assert events.Scalars("result/val_loss")[0].value == pytest.approx(record["result"]["val_loss"], rel=1e-6)

    (first,) = summarised_sessions(run_dir, wandb_id, 1)
    history = [values for kind, values in first if kind == "history" and "loss" in values]
    assert [(h["_step"], h["loss"], h["lr"]) for h in history] == logged  # exact: JSON doubles
    summary = {k: v for kind, values in first if kind == "summary" for k, v in values.items()}
    assert summary["val_loss"] == record["result"]["val_loss"] and summary["status"] == "ok"

    evaluate_existing(run_dir, progress=False)  # `slowrun eval`: a second session of the same W&B run
    sessions = summarised_sessions(run_dir, wandb_id, 2)
    assert len(sessions) == 2
    again = sessions[1]
    assert not [values for kind, values in again if kind == "history" and "loss" in values]  # nothing sent twice
    assert {k: v for kind, values in again if kind == "summary" for k, v in values.items()}["val_loss"] == \
        json.loads((run_dir / "record.json").read_text())["result"]["val_loss"]


def test_a_tracker_that_is_not_installed_is_refused_before_anything_is_written(make_method, synthetic_data, tmp_path,
                                                                               monkeypatch):
    method = make_method(LOGGING_METHOD)
    real = tracking_module.importlib.util.find_spec
    monkeypatch.setattr(tracking_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SlowrunError, match=r"tracking needs wandb.*pip install 'slowrun\[tracking\]'"):
        prepare_run(RunRequest(method_dir=method, track="synthetic", epochs=1.0, data_dir=synthetic_data,
                               out=tmp_path / "run", progress=False, wandb="p"))
    assert not (tmp_path / "run").exists()


class _Broken:
    def __init__(self):
        self.calls = 0

    def log(self, step, values):
        self.calls += 1
        raise ConnectionError("the tracker's server is down")

    def close(self):
        pass


class _Kept:
    def __init__(self):
        self.logged = []

    def log(self, step, values):
        self.logged.append((step, dict(values)))

    def close(self):
        pass


def test_a_failing_tracker_is_said_once_and_dropped_while_the_others_go_on(tmp_path, capfd):
    broken, kept = _Broken(), _Kept()
    tracking = Tracking({"broken": broken, "kept": kept}, tmp_path)
    tracking.log(10, {"loss": 1.0})
    tracking.log(20, {"loss": 0.5})
    assert broken.calls == 1 and kept.logged == [(10, {"loss": 1.0}), (20, {"loss": 0.5})]
    err = capfd.readouterr().err
    assert err.count("tracking to broken stopped") == 1 and "server is down" in err


def test_the_follower_sends_whole_lines_once_and_again_only_what_a_resume_rewrote(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    kept = _Kept()
    tracking = Tracking({"kept": kept}, tmp_path)
    follower = _Follower(tracking)
    metrics.write_text('{"tokens": 10, "epochs": 0.1, "loss": 3.0}\n{"tokens": 20, "eve')  # a line half written
    follower._read_new()
    assert kept.logged == [(10, {"epochs": 0.1, "loss": 3.0})]
    with open(metrics, "a") as f:
        f.write('nt": "snapshot", "tag": "a"}\n{"tokens": 30, "epochs": 0.3, "loss": 2.0, "ok": true}\n')
    follower._read_new()
    assert kept.logged[1:] == [(30, {"epochs": 0.3, "loss": 2.0})]  # an event line has nothing to plot, nor a boolean
    assert json.loads((tmp_path / TRACKING_DIR / "cursor.json").read_text()) == {"lines": 3}

    kept.logged.clear()  # a new session, after a resume cut the file back to its checkpoint's first line
    metrics.write_text('{"tokens": 10, "epochs": 0.1, "loss": 3.0}\n')
    resumed = _Follower(tracking)
    resumed._read_new()
    assert kept.logged == []
    with open(metrics, "a") as f:
        f.write('{"tokens": 25, "epochs": 0.25, "loss": 2.5}\n')
    resumed._read_new()
    assert kept.logged == [(25, {"epochs": 0.25, "loss": 2.5})]


def test_an_unreadable_cursor_is_said_and_every_line_is_sent_again(tmp_path, capfd):
    (tmp_path / TRACKING_DIR).mkdir()
    (tmp_path / TRACKING_DIR / "cursor.json").write_text("{not json")
    (tmp_path / "metrics.jsonl").write_text('{"tokens": 10, "loss": 3.0}\n')
    kept = _Kept()
    follower = _Follower(Tracking({"kept": kept}, tmp_path))
    follower._read_new()
    assert kept.logged == [(10, {"loss": 3.0})]
    assert "tracking cursor" in capfd.readouterr().err
