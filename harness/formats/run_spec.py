"""A run folder's ``run.json``: everything fixed when the run was prepared, typed.

The runner writes it once when it lays out the folder; training, resume, re-evaluation, the cluster job and
bundles read it back. It used to be a plain dict read in six places, each with its own defaults for keys
older folders lack; :meth:`RunSpec.from_json` is now the one place that knows those defaults, so a folder
made by any earlier version reads the same everywhere.

The file keeps its keys and layout (``json.dumps(..., indent=2, sort_keys=True)``): a folder written by
this version reads in older ones, and a key this version does not know (written by a newer one) is kept
in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from harness.common.atomic import write_text_atomic
from harness.common.distributed import LaunchSpec
from harness.errors import SlowrunError
from harness.rules.tracks import Track

RUN_SPEC = "run.json"

# Keys a folder made by an earlier version may lack, with the value that version behaved as.
_DEFAULTS: dict[str, Any] = {
    "allow_read": [], "pass_env": [], "launch": {}, "timeout_s": None, "time_limit_s": None,
    "max_snapshots": 4096, "eval_batch_size": 16, "eval_dtype": "float32", "eval_workers": 1,
    "eval_timeout_s": None, "eval_graphs": True, "gpt2_ranks": None, "downstream": None,
    "fitness_docs": None, "fitness_carve": None, "hardware": None, "created": None, "tracking": None,
}


def _frozen(value: Any) -> Any:
    """Nested JSON as read-only mappings and tuples, so a spec cannot be changed by accident."""
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def as_json(value: Any) -> Any:
    """A spec's nested value as plain JSON (dicts and lists), e.g. for the record."""
    if isinstance(value, Mapping):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [as_json(v) for v in value]
    return value


@dataclass(frozen=True)
class RunSpec:
    """What a run is (method, track and data, budget, seed, hyperparameters, compute class) and how the
    harness runs and evaluates it (device, launch, limits, evaluation options)."""

    run_id: str
    method: Mapping[str, Any]  # name, description, authors, entry, hash
    method_dir: str
    entry: str
    track: Mapping[str, Any]  # Track.to_dict(); `track_spec` reads it
    data_dir: str
    data_hash: str
    tokenizer: str
    vocab_size: int
    train_tokens: int
    val_tokens: int
    budget: float
    seed: int
    hparams: Mapping[str, Any]
    device: str
    compute_class: str
    hardware: Mapping[str, Any] | None = None
    time_limit_s: float | None = None
    created: str | None = None
    fitness_docs: Any = None
    fitness_carve: Mapping[str, Any] | None = None
    launch: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    timeout_s: float | None = None
    allow_read: tuple[str, ...] = ()
    pass_env: tuple[str, ...] = ()
    max_snapshots: int = 4096
    eval_batch_size: int = 16
    eval_dtype: str = "float32"
    eval_workers: int = 1
    eval_timeout_s: float | None = None
    eval_graphs: bool = True
    gpt2_ranks: str | None = None
    downstream: Mapping[str, Any] | None = None
    tracking: Mapping[str, Any] | None = None  # harness.run.tracking.TrackingOptions, its W&B run id fixed
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False)

    def __post_init__(self):
        for f in dataclasses.fields(self):  # however it was made, nested values are read-only
            object.__setattr__(self, f.name, _frozen(getattr(self, f.name)))

    @property
    def track_spec(self) -> Track:
        return Track.from_dict(as_json(self.track))

    @property
    def launch_spec(self) -> LaunchSpec:
        return LaunchSpec(**self.launch)

    @property
    def read_only_paths(self) -> tuple[str, ...]:
        """The method's folder and the ``--allow-read`` folders: what its processes may read."""
        return (self.method_dir, *self.allow_read)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = RUN_SPEC) -> "RunSpec":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise SlowrunError(f"{where}: not a run spec this harness can read (missing {', '.join(missing)})")
        values = {**_DEFAULTS, **{k: v for k, v in data.items() if k in names}}
        values = {k: v for k, v in values.items() if k in names}
        if values.get("eval_workers") is None:
            values["eval_workers"] = 1
        return cls(**values, extra={k: v for k, v in data.items() if k not in names})

    def to_json(self) -> dict[str, Any]:
        out = {f.name: as_json(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update(as_json(self.extra))
        return out

    def replace(self, **changes: Any) -> "RunSpec":
        return dataclasses.replace(self, **changes)


def read_run_spec(run_dir: Path) -> RunSpec:
    path = Path(run_dir) / RUN_SPEC
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SlowrunError(f"{run_dir}: not a run folder (no {RUN_SPEC})") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise SlowrunError(f"{path}: unreadable ({exc}); a run folder's {RUN_SPEC} is JSON written by slowrun run")
    if not isinstance(data, dict):
        raise SlowrunError(f"{path}: not a JSON object")
    return RunSpec.from_json(data, str(path))


def write_run_spec(run_dir: Path, spec: RunSpec) -> None:
    write_text_atomic(Path(run_dir) / RUN_SPEC, json.dumps(spec.to_json(), indent=2, sort_keys=True) + "\n")
