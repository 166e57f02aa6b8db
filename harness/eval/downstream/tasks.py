"""The downstream task configs and how lm-eval finds them.

The configs are data (``tasks/*.yaml`` in lm-eval's own task format) so the prompts are pinned by the
project rather than by whichever lm-eval version is installed. They are indexed through a TaskManager
that sees only this folder: indexing lm-eval's built-in tasks as well costs about 15 s and could let a
built-in config shadow ours.

Data comes from the Hub (each config's ``dataset_path``, the same datasets lm-eval uses) or from local
files (see :mod:`harness.eval.downstream.splits`: any split, checked against the config's
``metadata.row_schema``). Local files are read straight into memory: no network, no ``datasets`` cache
written behind the user's back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from harness.eval.downstream.splits import DownstreamData, SplitFile, check_rows, read_local_rows, warn_if_unofficial
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


def config_sha256(config: dict[str, Any]) -> str:
    """sha256 (64 lowercase hex digits, no prefix) of a task config as loaded, independent of YAML formatting.

    The digest is taken over the config's canonical JSON: ``json.dumps(config, sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)`` encoded as UTF-8. Comments, key order, quoting and
    indentation of the YAML file do not change it; any value that lm-eval reads (the prompt templates,
    the metrics, the splits, ``num_fewshot``, the metadata) does. It is the config of
    :func:`task_config`, the pinned file as ``yaml.safe_load`` (and lm-eval's own YAML loader, for these
    include-free files) reads it; for local data lm-eval is handed that config with its split keys
    replaced by the scored split and a loader added (:func:`scoring_config`), and the record says the
    split beside the digest.
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def local_split(path: Path, split: str, task: str, row_schema: dict, split_rows: dict | None = None,
                **_task_metadata):
    """lm-eval's ``custom_dataset`` hook: one split read from a local file, its rows checked against the
    task's schema.

    lm-eval calls the hook with the task's metadata as keyword arguments, hence the catch-all.
    """
    import datasets

    rows = read_local_rows(Path(path))
    check_rows(Path(path), rows, row_schema)
    warn_if_unofficial(task, split, len(rows), Path(path), split_rows or {})
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


def scoring_config(config: dict[str, Any], split_file: SplitFile) -> dict[str, Any]:
    """The task's config reading ``split_file``: lm-eval scores the config's test split when it names one, so
    the file's split becomes that, whatever the published default was."""
    metadata = config.get("metadata") or {}
    if "row_schema" not in metadata:
        raise SlowrunError(f"task {config['task']!r} has no metadata.row_schema, so its local rows cannot be checked")
    scored = {key: value for key, value in config.items() if key not in ("validation_split", "test_split")}
    loader = partial(local_split, split_file.path, split_file.split, config["task"])
    return {**scored, "test_split": split_file.split, "custom_dataset": loader}


def task_specs(names, data: DownstreamData | str | Path | None = None) -> list:
    """What to hand ``TaskManager.load``: registered names for Hub data, full configs for local data."""
    names = list(names)
    if not names:
        raise SlowrunError(f"no downstream tasks selected; choose from {', '.join(known_tasks())}")
    configs = [task_config(name) for name in names]
    data = DownstreamData.of(data)
    unused = sorted({f.task for f in data.files} - set(names))
    if unused:
        raise SlowrunError(f"a downstream file is given for {', '.join(unused)}, which is not scored "
                           f"(scored: {', '.join(names)})")
    if data.folder is not None and not data.folder.is_dir():
        raise DataError(f"{data.folder}: downstream data folder not found")
    specs = []
    for name, config in zip(names, configs):
        split_file = data.split_file(name, config)
        specs.append(name if split_file is None else scoring_config(config, split_file))
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


def load_tasks(names=DEFAULT_TASKS, data: DownstreamData | str | Path | None = None) -> dict:
    """Build the lm-eval task objects (``{"tasks": {name: Task}, ...}``), loading their documents."""
    specs = task_specs(names, data)
    with quiet_lm_eval():
        return task_manager().load(specs)
