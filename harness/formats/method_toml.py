"""A method directory's `method.toml`: its schema, and `slowrun check`, which reports every problem at once.

    [method]
    name = "single_model"
    description = "One GPT trained for the whole budget."
    authors = ["..."]
    entry = "train:main"          # module (a .py file in the directory) and function taking a RunContext
    tracks = ["*"]                # track names, or "*" for any

    [hparams]                     # defaults; `slowrun run --set key=value` overrides, typed by the default
    lr = 0.003

    [track_hparams.webtext]       # per-track defaults, same keys and types as [hparams]
    lr = 0.002

    [fitness]                     # held-out training documents the method wants (default: none)
    tokens = 4096                 # carved from the front of the training split, for this method's runs only
    tracks = { fineweb = 132000 } # per-track amounts

The fitness carve is the method's choice because it is paid for in training data: every token carved
is one the method cannot train on, and a method that needs none (a single model) trains on the whole split.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from harness.errors import SlowrunError
from harness.formats.records import MAX_NAME_CHARS, is_name_line
from harness.rules.tracks import available_tracks

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

METHOD_FILE = "method.toml"
_SCALARS = (bool, int, float, str)
_METHOD_KEYS = {"name", "description", "authors", "entry", "tracks"}


class MethodError(SlowrunError):
    """A method directory cannot be run; the message lists every problem found."""

    def __init__(self, folder: Path, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{folder / METHOD_FILE}: {len(problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class MethodSpec:
    folder: Path
    name: str
    description: str
    authors: tuple[str, ...]
    entry: str
    tracks: tuple[str, ...]
    hparams: tuple[tuple[str, Any], ...]
    track_hparams: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    fitness_default: int = 0
    fitness_tracks: tuple[tuple[str, int], ...] = ()

    def fitness_tokens(self, track: str) -> int:
        """Tokens of held-out training documents this method asks for on `track` (0: none)."""
        return dict(self.fitness_tracks).get(track, self.fitness_default)

    def supports(self, track: str) -> bool:
        return "*" in self.tracks or track in self.tracks

    def resolved_hparams(self, track: str, overrides: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Defaults, then the track's defaults, then `overrides` (strings from the command line, typed by
        the defaults). Raises MethodError naming every bad override."""
        values = dict(self.hparams)
        values.update(dict(dict(self.track_hparams).get(track, ())))
        problems = []
        for key, text in (overrides or {}).items():
            if key not in values:
                problems.append(f"--set {key}: unknown hyperparameter; known: {', '.join(sorted(values))}")
                continue
            try:
                values[key] = parse_like(values[key], text)
            except ValueError as exc:
                problems.append(f"--set {key}={text}: {exc}")
        if problems:
            raise MethodError(self.folder, problems)
        return values


def parse_like(default: Any, text: Any) -> Any:
    """Parse a command-line string into the default's type."""
    if not isinstance(text, str):
        return text
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    if isinstance(default, list):
        return [parse_like(default[0], part) if default else part for part in text.split(",")]
    return text


def _type_name(value: Any) -> str:
    return "number" if isinstance(value, float) else type(value).__name__


def _check_value(key: str, value: Any, problems: list[str], where: str) -> None:
    ok = isinstance(value, _SCALARS) or (isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value))
    if not ok:
        problems.append(f"{where}.{key}: must be a number, string, boolean or a list of them")


def _same_type(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return type(default) is type(value)


def method_files(folder: Path) -> list[Path]:
    """The files that make a method (what its hash covers and a bundle carries): every file of the folder
    but hidden ones, caches and bytecode, in a fixed order. Raises MethodError if one of them is not a
    regular file (see `_method_entries`)."""
    kept, problems = _method_entries(folder)
    if problems:
        raise MethodError(folder, problems)
    return kept


def _method_entries(folder: Path) -> tuple[list[Path], list[str]]:
    """(the method's files, a problem for each entry among them that is neither a folder nor a regular file).

    A FIFO, socket or device node cannot be part of a method, and reading one blocks for ever (a FIFO with
    no writer) or never ends (/dev/zero): hashing the folder would hang `slowrun run` or `leaderboard add`.
    Nothing is opened here; links are followed, as the hash always has (a link to a regular file counts as
    that file)."""
    kept, problems = [], []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_dir() or any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if path.suffix in (".pyc", ".pyo"):
            continue
        if not path.is_file():
            problems.append(f"{rel.as_posix()}: not a regular file (a FIFO, socket, device node or broken link); "
                            "a method folder holds files and folders only: remove it or move it out")
            continue
        kept.append(path)
    return kept, problems


def _read_regular(folder: Path, path: Path) -> bytes:
    """The bytes of a method file, refused unless it is still a regular file once opened: the file could be
    swapped for a FIFO after the folder was listed, and O_NONBLOCK makes opening one return at once."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MethodError(folder, [f"{path.relative_to(folder).as_posix()}: not a regular file (a FIFO, socket "
                                       "or device node); a method folder holds files and folders only"])
        return f.read()


def method_hash(folder: Path) -> str:
    """sha256 over every file of the method (relative path and bytes), ignoring caches and hidden files."""
    digest = hashlib.sha256()
    for path in method_files(folder):
        rel = path.relative_to(folder)
        digest.update(str(rel.as_posix()).encode() + b"\0")
        digest.update(_read_regular(folder, path))
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def read_method(folder: str | Path, track_files: tuple[str, ...] | list[str] = ()) -> tuple[MethodSpec | None, list[str]]:
    """Parse and validate a method directory's method.toml; returns (spec or None, every problem found).

    The entry is checked for form only: importing it runs the method's code, which
    :func:`harness.run.entry_check.check_method` does in a sandboxed child."""
    folder = Path(folder)
    path = folder / METHOD_FILE
    if not folder.is_dir():
        return None, [f"{folder}: not a directory"]
    if not path.is_file():
        return None, [f"{path}: missing; a method directory needs a method.toml"]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return None, [f"{path}: not valid TOML ({exc})"]

    problems: list[str] = _method_entries(folder)[1]  # said here, so `slowrun check` names a FIFO at once
    unknown_tables = sorted(set(data) - {"method", "hparams", "track_hparams", "fitness"})
    if unknown_tables:
        problems.append(f"unknown table(s) {', '.join(unknown_tables)}; allowed: method, hparams, track_hparams, "
                        "fitness")
    method = data.get("method")
    if not isinstance(method, dict):
        problems.append("[method]: missing table")
        method = {}
    for key in sorted(set(method) - _METHOD_KEYS):
        problems.append(f"[method].{key}: unknown key; allowed: {', '.join(sorted(_METHOD_KEYS))}")
    name = method.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append("[method].name: missing (a non-empty string)")
    elif not is_name_line(name.strip()):
        problems.append(f"[method].name: must be one line of at most {MAX_NAME_CHARS} characters without "
                        f"control characters, got {name[:40]!r}")
    description = method.get("description", "")
    if not isinstance(description, str):
        problems.append("[method].description: must be a string")
    authors = method.get("authors", [])
    if not isinstance(authors, list) or not all(isinstance(a, str) for a in authors):
        problems.append("[method].authors: must be a list of strings")
        authors = []
    tracks = method.get("tracks", ["*"])
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks) or not tracks:
        problems.append('[method].tracks: must be a non-empty list of track names (or ["*"])')
        tracks = ["*"]
    else:
        try:
            known = available_tracks(track_files)
        except SlowrunError as exc:
            problems.append(str(exc))
            known = {}
        for track in tracks:
            if track != "*" and known and track not in known:
                problems.append(f"[method].tracks: unknown track {track!r}; known: {', '.join(sorted(known))}")

    entry = method.get("entry")
    if not isinstance(entry, str) or entry.count(":") != 1 or not all(entry.split(":")):
        problems.append("[method].entry: missing or malformed; expected 'module:function', e.g. 'train:main'")

    hparams = data.get("hparams", {})
    if not isinstance(hparams, dict):
        problems.append("[hparams]: must be a table")
        hparams = {}
    for key, value in hparams.items():
        _check_value(key, value, problems, "[hparams]")
    track_hparams = data.get("track_hparams", {})
    if not isinstance(track_hparams, dict):
        problems.append("[track_hparams]: must be a table of tables, e.g. [track_hparams.webtext]")
        track_hparams = {}
    for track, table in track_hparams.items():
        where = f"[track_hparams.{track}]"
        if not isinstance(table, dict):
            problems.append(f"{where}: must be a table")
            continue
        for key, value in table.items():
            if key not in hparams:
                problems.append(f"{where}.{key}: not in [hparams]; declare its default there first")
            elif not _same_type(hparams[key], value):
                problems.append(f"{where}.{key}: is {_type_name(value)}, but the default in [hparams] is "
                                f"{_type_name(hparams[key])}")

    fitness_default, fitness_tracks = _check_fitness(data.get("fitness", {}), problems)

    if problems:
        return None, problems
    spec = MethodSpec(
        folder=folder.resolve(), name=name.strip(), description=description, authors=tuple(authors), entry=entry,
        tracks=tuple(tracks), hparams=tuple(sorted(hparams.items())),
        track_hparams=tuple(sorted((t, tuple(sorted(v.items()))) for t, v in track_hparams.items())),
        fitness_default=fitness_default, fitness_tracks=fitness_tracks,
    )
    return spec, []


def _check_fitness(table: Any, problems: list[str]) -> tuple[int, tuple[tuple[str, int], ...]]:
    """The [fitness] table: `tokens` (default for every track) and `tracks` (per-track amounts)."""
    if not isinstance(table, dict):
        problems.append("[fitness]: must be a table, e.g. [fitness] tokens = 4096")
        return 0, ()
    for key in sorted(set(table) - {"tokens", "tracks"}):
        problems.append(f"[fitness].{key}: unknown key; allowed: tokens, tracks")

    def amount(value: Any, where: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"{where}: must be a non-negative whole number of tokens (got {value!r})")
            return 0
        return value

    default = amount(table.get("tokens", 0), "[fitness].tokens")
    tracks = table.get("tracks", {})
    if not isinstance(tracks, dict):
        problems.append("[fitness].tracks: must be a table of track = tokens, e.g. { fineweb = 132000 }")
        tracks = {}
    per_track = tuple(sorted((str(t), amount(v, f"[fitness].tracks.{t}")) for t, v in tracks.items()))
    return default, per_track


def declared_entry(folder: str | Path) -> str | None:
    """The ``[method].entry`` of a folder's method.toml when it is well formed (``module:function``), else None:
    what the entry check imports even when other parts of the file have problems."""
    try:
        data = tomllib.loads((Path(folder) / METHOD_FILE).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    method = data.get("method")
    entry = method.get("entry") if isinstance(method, dict) else None
    if not isinstance(entry, str) or entry.count(":") != 1 or not all(entry.split(":")):
        return None
    return entry
