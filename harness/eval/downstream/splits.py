"""Which split of each downstream task is scored, from where, and what a record says about it.

A task is scored on its published split from the Hub unless local data is given: a folder laid out like
``../shared/data/downstream`` (each config's ``metadata.local_file``, the split lm-eval scores by default),
or one file per task naming its split (``--downstream-file arc_easy:validation=FILE``), which takes
precedence over the folder. Any split may be scored; the split's name and row count go into the record,
because a score on ARC-Easy's validation split (570 rows) cannot be ranked beside one on its test split.

A local file is checked against the task's ``metadata.row_schema`` (the fields the prompt reads), not
against a row count: a file of another size than the published split is scored with a
:class:`DownstreamSplitWarning`, and the record carries both counts.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from harness.errors import DataError, SlowrunError


class DownstreamSplitWarning(UserWarning):
    """A local split file whose row count differs from the published split of that name."""


@dataclass(frozen=True)
class SplitFile:
    """A local file holding one split of one task (``.jsonl``, or ``.json`` holding one array)."""

    task: str
    split: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> "SplitFile":
        """``TASK:SPLIT=PATH``, the command line's form."""
        key, sep, path = text.partition("=")
        task, colon, split = key.partition(":")
        if not sep or not colon or not task.strip() or not split.strip() or not path.strip():
            raise SlowrunError(f"--downstream-file {text!r}: expected TASK:SPLIT=PATH, "
                               "e.g. arc_easy:validation=data/ARC-Easy-validation.jsonl")
        return cls(task.strip(), split.strip(), Path(path.strip()))

    def to_json(self) -> dict:
        return {"task": self.task, "split": self.split, "path": str(self.path)}

    @classmethod
    def from_json(cls, data: Mapping) -> "SplitFile":
        return cls(str(data["task"]), str(data["split"]), Path(data["path"]))


@dataclass(frozen=True)
class DownstreamData:
    """Where downstream documents come from: per-task files, then a shared-layout folder, then the Hub."""

    folder: Path | None = None
    files: tuple[SplitFile, ...] = ()

    def __post_init__(self):
        tasks = [f.task for f in self.files]
        repeated = sorted({t for t in tasks if tasks.count(t) > 1})
        if repeated:
            raise SlowrunError(f"more than one downstream file given for {', '.join(repeated)}; give one split per task")

    @classmethod
    def of(cls, data: "DownstreamData | str | Path | None") -> "DownstreamData":
        """Accept the older form too: a folder path, or None for the Hub."""
        if isinstance(data, DownstreamData):
            return data
        return cls(folder=None if data is None else Path(data))

    def split_file(self, task: str, config: Mapping[str, Any]) -> SplitFile | None:
        """The local file scored for ``task``, or None to read the Hub."""
        for item in self.files:
            if item.task == task:
                return item
        if self.folder is None:
            return None
        metadata = config.get("metadata") or {}
        if "local_file" not in metadata:
            raise SlowrunError(f"task {task!r} has no metadata.local_file, so it cannot read a local folder")
        return SplitFile(task, scored_split(config), self.folder / metadata["local_file"])

    def to_json(self) -> dict:
        return {"folder": None if self.folder is None else str(self.folder),
                "files": [f.to_json() for f in self.files]}


def scored_split(config: Mapping[str, Any]) -> str:
    """The split lm-eval scores: test when the config has one, else validation (lm-eval's own rule)."""
    split = config.get("test_split") or config.get("validation_split")
    if not split:
        raise SlowrunError(f"task {config['task']!r} declares neither a test_split nor a validation_split")
    return split


def read_local_rows(path: Path) -> list[dict]:
    """Rows of a ``.jsonl`` file (one object a line) or a ``.json`` file holding one array of objects."""
    if not path.is_file():
        raise DataError(f"{path}: downstream data file not found (a downstream folder must hold arc_easy/, piqa/ "
                        "and sciq/ laid out like the shared downstream folder; --downstream-file names one file)")
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


_TYPES = {"str": str, "int": int}


def schema_problem(value: Any, schema: Any, where: str) -> str | None:
    """Why ``value`` does not fit ``schema`` (``"str"``, ``"int"``, ``[item]``, ``{field: schema}``), or None."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{where or 'the row'} should be an object"
        for field, inner in schema.items():
            path = f"{where}.{field}" if where else field
            if field not in value:
                return f"field {path!r} is missing"
            problem = schema_problem(value[field], inner, path)
            if problem:
                return problem
        return None
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"field {where!r} should be a list"
        for i, item in enumerate(value):
            problem = schema_problem(item, schema[0], f"{where}[{i}]")
            if problem:
                return problem
        return None
    expected = _TYPES[schema]
    if isinstance(value, bool) or not isinstance(value, expected):
        return f"field {where!r} should be {'a string' if expected is str else 'an integer'}, found {value!r}"
    return None


def check_rows(path: Path, rows: list[dict], schema: Mapping[str, Any]) -> None:
    """Refuse a file whose rows lack a field the task's prompt reads, naming the first such row."""
    if not rows:
        raise DataError(f"{path}: no rows")
    for index, row in enumerate(rows, 1):
        problem = schema_problem(row, dict(schema), "")
        if problem:
            raise DataError(f"{path}: row {index}: {problem}; this task needs rows with "
                            f"{json.dumps(dict(schema))} (the published dataset's fields)")


def warn_if_unofficial(task: str, split: str, rows: int, path: Path, split_rows: Mapping[str, int]) -> None:
    official = split_rows.get(split)
    if official is None:
        warnings.warn(f"{task}: {path} is scored as split {split!r}, which the task does not publish "
                      f"(published: {', '.join(f'{k} {v}' for k, v in split_rows.items())}); the record says so",
                      DownstreamSplitWarning, stacklevel=3)
    elif rows != official:
        warnings.warn(f"{task}: {path} has {rows} rows, but the published {split} split has {official}; "
                      "its scores will not compare with scores on the published split", DownstreamSplitWarning,
                      stacklevel=3)


def file_sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split_facts(config: Mapping[str, Any], split_file: SplitFile | None, rows: int) -> dict:
    """What a record says about the scored split: its name, its rows, the published count, where it came from."""
    metadata = config.get("metadata") or {}
    official = (metadata.get("split_rows") or {})
    if split_file is None:
        split = scored_split(config)
        source = {"hub": config["dataset_path"], "name": config.get("dataset_name")}
    else:
        split = split_file.split
        source = {"file": split_file.path.name, "sha256": file_sha256(split_file.path)}
    return {"split": split, "split_rows": int(rows), "published_rows": official.get(split), "source": source}
