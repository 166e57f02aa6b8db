"""Tracks: everything that makes two results comparable, as frozen data.

A track names its source, tokenizer, split sizes, sequence length, the fitness carve and the reference
curve used for data efficiency. The built-in tracks live in this module; users add their own from TOML
files (``--tracks FILE`` or ``$SLOWRUN_TRACKS``), in the same shape:

    [tracks.mytrack]
    description = "my corpus"
    val_tokens = 60000
    train_tokens = 100000
    seq_len = 128
    fitness_tokens = 4096
    source = { kind = "local", paths = ["corpus/*.jsonl"], text_field = "text" }
    tokenizer = { kind = "byte-bpe", vocab_size = 2048 }

Relative source paths resolve against the TOML file's folder (built-in tracks: the shared data root,
``$SLOWRUN_DATA_ROOT``, default ``../shared/data`` beside the project).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import TrackError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from harness.common.paths import PROJECT_ROOT  # noqa: E402 - beside the other module constants
TRACKS_ENV = "SLOWRUN_TRACKS"
DATA_ROOT_ENV = "SLOWRUN_DATA_ROOT"
DEFAULT_TRACK = "synthetic"

SOURCE_KINDS = ("fineweb", "local", "synthetic")
TOKENIZER_KINDS = ("gpt2", "byte-bpe", "identity")


def default_data_root() -> Path:
    return Path(os.environ.get(DATA_ROOT_ENV, PROJECT_ROOT.parent / "shared" / "data"))


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    paths: tuple[str, ...] = ()
    text_field: str = "text"
    txt_separator: str | None = None
    dataset: str = "HuggingFaceFW/fineweb"
    config: str = "sample-10BT"
    split: str = "train"
    synthetic: tuple[tuple[str, float], ...] = ()  # SyntheticLanguage parameters that differ from its defaults
    base_dir: str | None = None  # where relative paths resolve; None = the shared data root
    redacted: bool = False  # only the kind is known: the method's view of a track (Track.public_dict)

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise TrackError(f"source kind {self.kind!r} is unknown; use one of {', '.join(SOURCE_KINDS)}")
        if self.kind == "local" and not self.paths and not self.redacted:
            raise TrackError("a local source needs `paths` (files or glob patterns)")


@dataclass(frozen=True)
class TokenizerSpec:
    kind: str
    vocab_size: int | None = None  # byte-bpe: the vocabulary to train, BOS included
    ranks_path: str | None = None  # gpt2: explicit ranks file (else $SLOWRUN_GPT2_RANKS, else tiktoken)

    def __post_init__(self):
        if self.kind not in TOKENIZER_KINDS:
            raise TrackError(f"tokenizer kind {self.kind!r} is unknown; use one of {', '.join(TOKENIZER_KINDS)}")
        if self.kind == "byte-bpe" and not (self.vocab_size and 257 < self.vocab_size <= 65536):
            raise TrackError("a byte-bpe tokenizer needs vocab_size between 258 and 65536")


@dataclass(frozen=True)
class Track:
    name: str
    description: str
    source: SourceSpec
    tokenizer: TokenizerSpec
    val_tokens: int
    train_tokens: int
    seq_len: int
    # The default fitness carve recorded in prepared data (part of its data hash). Runs carve what their
    # method declares in method.toml (harness/data/fitness.py); this is the carve of runs from before that.
    fitness_tokens: int
    reference_curve: str | None = None  # a file in harness/eval/reference_curves/ (by stem) or a path
    defaults: tuple[tuple[str, object], ...] = field(default=())  # suggested method settings (informational)
    # The compute classes (harness/rules/compute.py) a run of this track may enter; () means every class.
    # Rules of competition, not of the data: left out of to_dict, so prepared data does not depend on them.
    compute_classes: tuple[str, ...] = ()

    def __post_init__(self):
        problems = []
        for name in ("val_tokens", "train_tokens", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive integer (got {value!r})")
        if not isinstance(self.fitness_tokens, int) or self.fitness_tokens < 0:
            problems.append(f"fitness_tokens must be a non-negative integer (got {self.fitness_tokens!r})")
        elif isinstance(self.train_tokens, int) and self.fitness_tokens >= self.train_tokens // 2:
            problems.append("fitness_tokens must be well below train_tokens (it is carved out of training)")
        if isinstance(self.val_tokens, int) and isinstance(self.seq_len, int) and self.val_tokens < self.seq_len + 1:
            problems.append("val_tokens must hold at least one window of seq_len + 1 tokens")
        from harness.rules.compute import COMPUTE_CLASSES

        unknown = [c for c in self.compute_classes if c not in COMPUTE_CLASSES]
        if unknown:
            problems.append(f"compute_classes: unknown {', '.join(map(repr, unknown))}; known: "
                            f"{', '.join(COMPUTE_CLASSES)}")
        if problems:
            raise TrackError(f"track {self.name!r}: " + "; ".join(problems))

    def allows_class(self, name: str) -> bool:
        return not self.compute_classes or name in self.compute_classes

    @property
    def val_windows(self) -> int:
        """Full evaluation windows: disjoint chunks of seq_len + 1 tokens (seq_len targets each)."""
        return self.val_tokens // (self.seq_len + 1)

    def to_dict(self) -> dict:
        """The whole spec as plain data. `redacted` appears only on a redacted spec, so the dict of an
        ordinary track (stored in every prepared manifest's request) is the same as before it existed."""
        raw = dataclasses.asdict(self)
        del raw["compute_classes"]
        if not self.source.redacted:
            del raw["source"]["redacted"]
        return raw

    def redacted(self) -> "Track":
        """This track as the method's process may know it: its source reduced to its kind.

        The source spec is what generates the data: the synthetic language's seed and parameters (from
        which the validation split can be regenerated token for token), or the paths of the raw files
        (which hold the validation documents). A method needs none of it: name, description, sizes,
        seq_len, tokenizer, fitness carve, reference curve and suggested defaults all stay.
        """
        return dataclasses.replace(self, source=SourceSpec(kind=self.source.kind, redacted=True))

    def public_dict(self) -> dict:
        """`redacted().to_dict()`: the track spec to give the method's process (worker.json); it
        round-trips through `Track.from_dict`, and such a track refuses to prepare data."""
        raw = self.redacted().to_dict()
        raw["source"] = {"kind": raw["source"]["kind"], "redacted": True}  # defaults of the rest add nothing
        return raw

    @classmethod
    def from_dict(cls, raw: dict) -> "Track":
        """The inverse of to_dict and public_dict (lists back to tuples), for specs that crossed a JSON file."""
        source = dict(raw["source"])
        source["paths"] = tuple(source.get("paths", ()))
        source["synthetic"] = tuple(tuple(item) for item in source.get("synthetic", ()))
        fields = {k: v for k, v in raw.items() if k not in ("source", "tokenizer", "defaults")}
        return cls(source=SourceSpec(**source), tokenizer=TokenizerSpec(**raw["tokenizer"]),
                   defaults=tuple(tuple(item) for item in raw.get("defaults", ())), **fields)

    def source_root(self) -> Path:
        return Path(self.source.base_dir) if self.source.base_dir else default_data_root()


BUILTIN_TRACKS: dict[str, Track] = {
    "fineweb": Track(
        name="fineweb",
        description="The official track: FineWeb sample-10BT streamed in order, GPT-2 BPE, "
        "10M validation tokens, then 100M training tokens, windows of 2049.",
        source=SourceSpec(kind="fineweb"),
        tokenizer=TokenizerSpec(kind="gpt2"),
        val_tokens=10_000_000,
        train_tokens=100_000_000,
        seq_len=2048,
        fitness_tokens=1_000_000,
        reference_curve="fineweb",
        compute_classes=("tiny", "limited", "two-hour", "unlimited"),
    ),
    "synthetic": Track(
        name="synthetic",
        description="Offline default for CPUs: a seeded hidden-Markov language with a known best loss, "
        "512-token vocabulary, 64K training tokens, windows of 129.",
        source=SourceSpec(kind="synthetic"),
        tokenizer=TokenizerSpec(kind="identity"),
        val_tokens=32_768,
        train_tokens=65_536,
        seq_len=128,
        fitness_tokens=4_096,
        reference_curve="synthetic",
    ),
    "webtext": Track(
        name="webtext",
        description="Small real-text track over OpenAI WebText documents with a 2K byte-level BPE: "
        "60K validation tokens, 100K training tokens, windows of 129.",
        source=SourceSpec(kind="local", paths=("webtext/webtext.*.jsonl",)),
        tokenizer=TokenizerSpec(kind="byte-bpe", vocab_size=2048),
        val_tokens=60_000,
        train_tokens=100_000,
        seq_len=128,
        fitness_tokens=5_000,
        reference_curve="webtext",
    ),
}

_TRACK_KEYS = {f.name for f in dataclasses.fields(Track)} - {"name"}
_SOURCE_KEYS = {f.name for f in dataclasses.fields(SourceSpec)} - {"redacted"}  # not a thing a track file sets
_TOKENIZER_KEYS = {f.name for f in dataclasses.fields(TokenizerSpec)}


def _unknown(keys, allowed, where: str) -> None:
    extra = sorted(set(keys) - set(allowed))
    if extra:
        raise TrackError(f"{where}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")


def track_from_dict(name: str, raw: dict, base_dir: Path | None, where: str) -> Track:
    """Build a Track from TOML data, with errors that name the file and the key to fix."""
    _unknown(raw, _TRACK_KEYS, f"{where} [tracks.{name}]")
    try:
        source_raw = dict(raw["source"])
        tokenizer_raw = dict(raw["tokenizer"])
    except KeyError as exc:
        raise TrackError(f"{where} [tracks.{name}]: missing table {exc.args[0]!r}") from None
    _unknown(source_raw, _SOURCE_KEYS, f"{where} [tracks.{name}.source]")
    _unknown(tokenizer_raw, _TOKENIZER_KEYS, f"{where} [tracks.{name}.tokenizer]")
    source_raw["paths"] = tuple(source_raw.get("paths", ()))
    source_raw["synthetic"] = tuple(sorted(dict(source_raw.get("synthetic", {})).items()))
    if base_dir is not None and "base_dir" not in source_raw:
        source_raw["base_dir"] = str(base_dir)
    missing = [k for k in ("val_tokens", "train_tokens", "seq_len") if k not in raw]
    if missing:
        raise TrackError(f"{where} [tracks.{name}]: missing {', '.join(missing)}")
    curve = raw.get("reference_curve")
    if curve and base_dir is not None and ("/" in curve or curve.endswith(".json")):
        curve = str((base_dir / curve).resolve())
    try:
        return Track(
            name=name,
            description=str(raw.get("description", "")),
            source=SourceSpec(**source_raw),
            tokenizer=TokenizerSpec(**tokenizer_raw),
            val_tokens=raw["val_tokens"],
            train_tokens=raw["train_tokens"],
            seq_len=raw["seq_len"],
            fitness_tokens=raw.get("fitness_tokens", 0),
            reference_curve=curve,
            defaults=tuple(sorted(dict(raw.get("defaults", {})).items())),
            compute_classes=tuple(raw.get("compute_classes", ())),
        )
    except TypeError as exc:
        raise TrackError(f"{where} [tracks.{name}]: {exc}") from None
    except TrackError as exc:
        raise TrackError(f"{where}: {exc}") from None


def load_track_file(path: str | os.PathLike) -> dict[str, Track]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrackError(f"{path}: track file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise TrackError(f"{path}: not valid TOML ({exc})") from None
    tracks = data.get("tracks")
    if not isinstance(tracks, dict) or not tracks:
        raise TrackError(f"{path}: no [tracks.NAME] tables found")
    return {name: track_from_dict(name, raw, path.parent.resolve(), str(path)) for name, raw in tracks.items()}


def available_tracks(extra_files: list[str] | tuple[str, ...] = ()) -> dict[str, Track]:
    """Built-in tracks, then those of $SLOWRUN_TRACKS files, then `extra_files` (later ones override)."""
    tracks = dict(BUILTIN_TRACKS)
    env_files = [p for p in os.environ.get(TRACKS_ENV, "").split(os.pathsep) if p]
    for file in [*env_files, *extra_files]:
        tracks.update(load_track_file(file))
    return tracks


def get_track(name: str, extra_files: list[str] | tuple[str, ...] = ()) -> Track:
    tracks = available_tracks(extra_files)
    if name not in tracks:
        raise TrackError(f"unknown track {name!r}; known tracks: {', '.join(sorted(tracks))} "
                         f"(add your own with --tracks FILE.toml)")
    return tracks[name]
