"""The downstream task configs and how lm-eval finds them.

The configs are data (``tasks/*.yaml`` in lm-eval's own task format) so the prompts are pinned by the
project rather than by whichever lm-eval version is installed. They are indexed through a TaskManager
that sees only this folder: indexing lm-eval's built-in tasks as well costs about 15 s and could let a
built-in config shadow ours.

Data comes from the Hub (each config's ``dataset_path``, the same datasets lm-eval uses) or from a local
folder laid out like ``../shared/data/downstream`` (each config's ``metadata.local_file``). Local files are
read straight into memory: no network, no ``datasets`` cache written behind the user's back.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from harness.errors import DataError, SlowrunError

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DEFAULT_TASKS = ("arc_easy", "piqa", "sciq")


def known_tasks() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in TASKS_DIR.glob("*.yaml")))


def task_config(name: str) -> dict[str, Any]:
    """The config of one task as lm-eval reads it (a plain dict; the files use no includes or functions)."""
    path = TASKS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SlowrunError(f"unknown downstream task {name!r}; choose from {', '.join(known_tasks())}")
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def scored_split(config: dict[str, Any]) -> str:
    """The split lm-eval scores: test when the config has one, else validation (lm-eval's own rule)."""
    split = config.get("test_split") or config.get("validation_split")
    if not split:
        raise SlowrunError(f"task {config['task']!r} declares neither a test_split nor a validation_split")
    return split


def read_local_rows(path: Path) -> list[dict]:
    """Rows of a ``.jsonl`` file (one object a line) or a ``.json`` file holding one array of objects."""
    if not path.is_file():
        raise DataError(f"{path}: downstream data file not found (the folder given for downstream data "
                        "must hold arc_easy/, piqa/ and sciq/ laid out like the shared downstream folder)")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected one JSON array of objects, found {type(rows).__name__}")
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if bad is not None:
        raise DataError(f"{path}: row {bad + 1} is not a JSON object")
    return rows


def local_split(path: Path, split: str, documents: int | None = None, **_task_metadata):
    """lm-eval's ``custom_dataset`` hook: the scored split read from a local file.

    lm-eval calls the hook with the task's metadata as keyword arguments, hence the catch-all. The row
    count is checked against the split's published size, because a score on a different file would sit
    on the leaderboard beside scores it cannot be compared with.
    """
    import datasets

    rows = read_local_rows(Path(path))
    if documents is not None and len(rows) != documents:
        raise DataError(f"{path}: has {len(rows)} rows, but the {split} split this task scores has {documents}; "
                        "use the unmodified split")
    if not rows:
        raise DataError(f"{path}: no rows")
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


def task_specs(names, data_dir: str | Path | None = None) -> list:
    """What to hand ``TaskManager.load``: registered names for Hub data, full configs for local data."""
    names = list(names)
    if not names:
        raise SlowrunError(f"no downstream tasks selected; choose from {', '.join(known_tasks())}")
    configs = [task_config(name) for name in names]
    if data_dir is None:
        return names
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: downstream data folder not found")
    specs = []
    for config in configs:
        metadata = config.get("metadata") or {}
        if "local_file" not in metadata:
            raise SlowrunError(f"task {config['task']!r} has no metadata.local_file, so it cannot read local data")
        loader = partial(local_split, root / metadata["local_file"], scored_split(config))
        specs.append({**config, "custom_dataset": loader})
    return specs


def task_manager():
    """A TaskManager that indexes only the project's task configs."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@contextmanager
def quiet_lm_eval():
    """lm-eval warns for every task that uses a custom loader and whenever `limit` is set; neither is news."""
    loggers = [logging.getLogger(name) for name in ("lm_eval", "lm_eval.api.task", "lm_eval.evaluator")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def load_tasks(names=DEFAULT_TASKS, data_dir: str | Path | None = None) -> dict:
    """Build the lm-eval task objects (``{"tasks": {name: Task}, ...}``), loading their documents."""
    specs = task_specs(names, data_dir)
    with quiet_lm_eval():
        return task_manager().load(specs)
