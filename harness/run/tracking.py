"""Experiment tracking: a run's metrics and its record's summary, sent to Weights & Biases and TensorBoard.

Slowrun's users watch long runs on a tracker (q0's published run took 80 hours). The harness's own account
stays ``metrics.jsonl`` and ``record.json``; tracking is a copy of it, made by the runner (harness side, never
the method's process, which has no network), and optional: nothing is installed or needed for the offline
demo (``pip install 'slowrun[tracking]'`` adds both).

- Metrics are followed as the data server appends them to rank 0's ``metrics.jsonl`` (every numeric field
  of each line, at the step of the training tokens served so far: the same axis for every method), so the
  tracker shows what the record will count, not what the method claims. A line reaches the trackers once:
  a cursor in ``tracking/cursor.json`` says how many were sent, across resumes.
- The record's summary (status, validation loss and bits/byte, data efficiency, epochs, training time) is
  sent when the record is written, by `slowrun run`, `--resume` and `slowrun eval` alike.
- One W&B run id is fixed when the run folder is prepared and kept in ``run.json``, so every resume (a
  requeued Slurm job too) continues the same W&B run; ``offline`` mode writes it under the run folder for
  ``wandb sync`` later. The record names the W&B run and the TensorBoard folder (``record["tracking"]``).

A tracker that fails (a network error, a full disk) never fails the run: the first error of each sink is
said on stderr and the sink stops; the record is written regardless.
"""

from __future__ import annotations

import importlib.util
import json
import math
import secrets
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

from harness.common.atomic import write_json_atomic
from harness.errors import SlowrunError

TRACKING_DIR = "tracking"  # in the run folder: the cursor, and W&B's files unless told otherwise
CURSOR = "cursor.json"
WANDB_MODES = ("online", "offline")
FOLLOW_INTERVAL_S = 2.0
EXTRA = "pip install 'slowrun[tracking]'"


@dataclass(frozen=True)
class TrackingOptions:
    """Where a run's metrics go: ``--wandb PROJECT`` (``--wandb-mode``), ``--tensorboard DIR``."""

    wandb_project: str | None = None
    wandb_mode: str = "online"
    wandb_id: str | None = None  # fixed when the run is prepared; every resume continues this W&B run
    wandb_entity: str | None = None
    tensorboard_dir: str | None = None

    def __post_init__(self):
        if self.wandb_mode not in WANDB_MODES:
            raise SlowrunError(f"--wandb-mode must be one of {', '.join(WANDB_MODES)}, got {self.wandb_mode!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.wandb_project or self.tensorboard_dir)

    @classmethod
    def requested(cls, wandb_project: str | None, wandb_mode: str = "online", tensorboard_dir: str | Path | None = None,
                  wandb_entity: str | None = None) -> "TrackingOptions | None":
        """The options of a new run (a fresh W&B run id), or None when nothing is tracked; refuses a tracker
        whose package is not installed, before anything is written."""
        missing = [name for name, wanted in (("wandb", wandb_project), ("tensorboard", tensorboard_dir))
                   if wanted and importlib.util.find_spec(name) is None]
        if missing:
            raise SlowrunError(f"tracking needs {' and '.join(missing)}, which is not installed: {EXTRA}")
        options = cls(wandb_project=wandb_project or None, wandb_mode=wandb_mode,
                      wandb_id=("slowrun-" + secrets.token_hex(6)) if wandb_project else None,
                      wandb_entity=wandb_entity,
                      tensorboard_dir=str(Path(tensorboard_dir).resolve()) if tensorboard_dir else None)
        return options if options.enabled else None

    def to_json(self) -> dict:
        return {"wandb_project": self.wandb_project, "wandb_mode": self.wandb_mode, "wandb_id": self.wandb_id,
                "wandb_entity": self.wandb_entity, "tensorboard_dir": self.tensorboard_dir}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "TrackingOptions | None":
        if not data:
            return None
        return cls(**{k: data.get(k) for k in ("wandb_project", "wandb_id", "wandb_entity", "tensorboard_dir")},
                   wandb_mode=data.get("wandb_mode") or "online")


def record_link(options: TrackingOptions | None, run_dir: Path, run_id: str) -> dict | None:
    """What the record says of its tracking: the W&B run (project, id, mode, where offline files are) and the
    TensorBoard folder of this run."""
    if options is None:
        return None
    link: dict[str, Any] = {}
    if options.wandb_project:
        link["wandb"] = {"project": options.wandb_project, "entity": options.wandb_entity, "id": options.wandb_id,
                         "mode": options.wandb_mode, "dir": str(Path(run_dir).resolve() / TRACKING_DIR)}
    if options.tensorboard_dir:
        link["tensorboard"] = {"dir": str(Path(options.tensorboard_dir) / run_id)}
    return link


def record_summary(record: Mapping[str, Any]) -> dict[str, float | str]:
    """The numbers a tracker's summary shows of a record (None-valued ones left out)."""
    result = record.get("result") or {}
    efficiency = (result.get("data_efficiency") or {}).get("multiplier")
    values = {
        "status": record.get("status"),
        "val_loss": result.get("val_loss"), "val_bpb": result.get("val_bpb"),
        "ensemble_size": result.get("ensemble_size"), "data_efficiency": efficiency,
        "epochs": (record.get("metered") or {}).get("epochs"),
        "train_s": (record.get("timings") or {}).get("train_s"),
        "downstream_average": record.get("downstream_average"),
        "preemptions": (record.get("scheduler") or {}).get("preemptions"),
    }
    return {k: v for k, v in values.items() if v is not None}


class Sink(Protocol):
    def log(self, step: int, values: Mapping[str, float]) -> None: ...
    def summary(self, step: int, values: Mapping[str, float | str], record: Mapping[str, Any]) -> None: ...
    def close(self) -> None: ...


class TensorBoardSink:
    """Event files under ``DIR/RUN_ID`` (the run's name, so one DIR holds many runs side by side): scalars
    ``train/<key>`` at the training-token step, and ``result/<key>`` with the record as text at the end."""

    def __init__(self, log_dir: str, run_id: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(log_dir) / run_id))

    def log(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, global_step=step)

    def summary(self, step: int, values: Mapping[str, float | str], record: Mapping[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"result/{key}", value, global_step=step)
        self.writer.add_text("record", "```\n" + json.dumps(record_summary(record), indent=2) + "\n```",
                             global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """One W&B run per Slowrun run: its id fixed in run.json, resumed by every later session."""

    def __init__(self, options: TrackingOptions, run_dir: Path, config: Mapping[str, Any]):
        import wandb

        folder = Path(run_dir) / TRACKING_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=options.wandb_project, entity=options.wandb_entity, id=options.wandb_id,
                              resume="allow", mode=options.wandb_mode, dir=str(folder),
                              name=str(config.get("run_id")), config=dict(config))

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def summary(self, step: int, values: Mapping[str, float | str], record: Mapping[str, Any]) -> None:
        for key, value in values.items():
            self.run.summary[key] = value

    def close(self) -> None:
        self.run.finish()


def numeric_fields(line: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a metrics line worth plotting: every finite number but the step itself.

    An integer too large for a float (the server refuses them, but a metrics file from elsewhere may hold
    one) is left out, not raised: math.isfinite(10**400) raises OverflowError, and would stop the follower."""
    fields = {}
    for k, v in line.items():
        if k == "tokens" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        try:
            number = float(v)
        except OverflowError:
            continue
        if math.isfinite(number):
            fields[k] = number
    return fields


class Tracking:
    """The open sinks of one runner session; every call is safe (a failing sink is said once and dropped)."""

    def __init__(self, sinks: dict[str, Sink], run_dir: Path):
        self.sinks = sinks
        self.run_dir = Path(run_dir)
        self._lock = threading.Lock()
        self._follower: _Follower | None = None

    def _each(self, what: str, call) -> None:
        with self._lock:
            for name, sink in list(self.sinks.items()):
                try:
                    call(sink)
                except Exception as exc:  # a tracker never fails a run; it says why it stopped
                    print(f"slowrun: tracking to {name} stopped ({what}: {type(exc).__name__}: {exc}); the run "
                          "goes on and its record is written as usual", file=sys.stderr, flush=True)
                    self.sinks.pop(name, None)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        if values:
            self._each("log", lambda sink: sink.log(step, values))

    def follow(self) -> None:
        """Send rank 0's metrics lines as they are written (a thread), from where the last session stopped."""
        if self.sinks and self._follower is None:
            self._follower = _Follower(self)
            self._follower.start()

    def stop_following(self) -> None:
        if self._follower is not None:
            self._follower.stop()
            self._follower = None

    def publish(self, record: Mapping[str, Any]) -> None:
        step = int((record.get("metered") or {}).get("train_tokens") or 0)
        self._each("summary", lambda sink: sink.summary(step, record_summary(record), record))

    def close(self) -> None:
        self.stop_following()
        self._each("close", lambda sink: sink.close())
        self.sinks.clear()


def open_tracking(options: TrackingOptions | None, run_dir: Path, config: Mapping[str, Any]) -> Tracking:
    """The run's sinks, opened (none when nothing is tracked). A sink that cannot open is said and skipped."""
    tracking = Tracking({}, run_dir)
    if options is None:
        return tracking
    makers = []
    if options.tensorboard_dir:
        makers.append(("TensorBoard", lambda: TensorBoardSink(options.tensorboard_dir, str(config.get("run_id")))))
    if options.wandb_project:
        makers.append(("W&B", lambda: WandbSink(options, run_dir, config)))
    for name, make in makers:
        try:
            tracking.sinks[name] = make()
        except Exception as exc:  # a tracker never fails a run; it says why it is not there
            print(f"slowrun: tracking to {name} could not start ({type(exc).__name__}: {exc}); the run goes on "
                  "without it", file=sys.stderr, flush=True)
    return tracking


class _Follower(threading.Thread):
    """Reads rank 0's metrics.jsonl as it grows; whole lines only, each sent once (the cursor)."""

    def __init__(self, tracking: Tracking):
        super().__init__(name="slowrun-tracking", daemon=True)
        self.tracking = tracking
        self.path = tracking.run_dir / "metrics.jsonl"
        self.cursor_path = tracking.run_dir / TRACKING_DIR / CURSOR
        self._stop_event = threading.Event()
        self.sent = self._read_cursor()
        self._offset = 0
        self._seen = 0  # whole lines read so far

    def _read_cursor(self) -> int:
        """Lines an earlier session sent; 0 for a run's first session. An unreadable cursor is said and
        read as 0: the trackers then see those lines again rather than miss any."""
        try:
            return int(json.loads(self.cursor_path.read_text())["lines"])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"slowrun: tracking cursor {self.cursor_path} unreadable ({type(exc).__name__}: {exc}); "
                  "sending this run's metrics from the start", file=sys.stderr, flush=True)
            return 0

    def run(self) -> None:
        while not self._stop_event.wait(FOLLOW_INTERVAL_S):
            self._read_new()
        self._read_new()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=60)

    def _read_new(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        whole = chunk[:chunk.rfind(b"\n") + 1]
        if self._offset == 0:
            # A resume cut the file back to its last checkpoint before this session began: the lines past it
            # that an earlier session sent are written again, and sent again (W&B keeps the first of a step).
            self.sent = min(self.sent, whole.count(b"\n"))
        self._offset += len(whole)
        for raw in whole.splitlines():
            self._seen += 1
            if self._seen <= self.sent:
                continue  # sent by an earlier session
            try:
                line = json.loads(raw)
            except ValueError:
                continue  # the data server writes whole JSON lines; anything else is not a metric
            if isinstance(line, dict) and isinstance(line.get("tokens"), int):
                self.tracking.log(line["tokens"], numeric_fields(line))
            self.sent = self._seen
        if whole:
            self.cursor_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.cursor_path, {"lines": self.sent})
