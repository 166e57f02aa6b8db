"""Slowrun's own data files, `fineweb_val.pt` and `fineweb_train.pt`: import them, and export to them.

Slowrun users already hold these files, made by `prepare_data.py` in qlabs-eng/slowrun. They come in two
layouts, and both hold the same token stream the harness prepares for the `fineweb` track: FineWeb
`sample-10BT` streamed in order, `<|endoftext|>` (50256) before every document, GPT-2 ids, validation
first until it holds its budget (the document that reaches it is cut there), training from the next
document on, cut the same way.

- The current layout (`prepare_data.py` since a4732774888d535f681295de4ef1c66a57a3cc60, "Document-level
  shuffling", still so at fd342f0): a dict with `tokens` (1-D uint16, the whole stream), `doc_starts`
  (1-D int64, each document's first position, 0 first), `bos_id`, `seq_shuffle_seed` (42 validation, 43
  training: the loaders permute sequences with it, the file itself is in stream order) and `seq_size`
  (2049). These arrays are the harness's arrays as they are.
- The older chunked layout (`prepare_data.py` at 0d49316, the initial commit): the stream was cut into
  2049-token sequences, the tokens past the last whole sequence dropped, the sequences shuffled with
  numpy's legacy generator (`np.random.seed(42)` for validation, 43 for training, then
  `np.random.shuffle` of the rows), and written as `chunks` of `batch_size` (16) sequences, flattened,
  the last chunk zero-padded, with `valid_counts` saying how many sequences of each chunk are real, plus
  `batch_size` and `sequence_size`. Importing undoes the shuffle: row k of the shuffled array is row
  `RandomState(seed).permutation(n)[k]` of the stream. Document starts are where BOS stands (GPT-2's
  ordinary encoding never emits 50256). What was dropped cannot be recovered, so the imported splits
  hold whole sequences only (9,999,120 and 99,999,396 tokens of the official 10M and 100M): other data,
  with another data hash, than an import of the current files.

Each file's sha256 must be one `prepare_data.py` publishes for it (PUBLISHED_SHA256), checked before it
is unpickled, and it is read with `torch.load(weights_only=True)`, memory-mapped, so the 100M-token
training file is never held twice. The imported folder is written by the same code as a streamed
preparation (`harness.data.prepare`) and equals it byte for byte, arrays and data hash included; the
manifest differs only by `imported_from` (which files, which layout, their hashes) and by what the files
cannot tell: whether each split's last document was cut (`last_truncated` is null) and, for the chunked
layout with a dropped validation tail, which stream documents the training split starts and ends with.

Export writes a harness split in the current layout, readable by `train.py`, `tiny/train.py`,
`two_hour/train.py` and `unlimited/train.py`, which all `torch.load(..., weights_only=True)` the dict,
take `tokens.long()` and `doc_starts.long()`, assert `bos_id == 50256` and read `seq_shuffle_seed`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from harness.data.fineweb import FinewebSource
from harness.data.manifest import SPLITS, read_manifest, verify_prepared, write_manifest
from harness.data.prepare import (PrepareResult, build_source, build_tokenizer, check_output_folder, move_into_place,
                                  prepare_request, write_splits)
from harness.errors import DataError
from harness.rules.official_hashes import official_hashes
from harness.formats.snapshots import sha256_file
from harness.rules.tracks import Track

SLOWRUN_REPOSITORY = "qlabs-eng/slowrun"
CURRENT, CHUNKED = "current", "chunked"
LAYOUT_COMMITS = {
    CURRENT: "a4732774888d535f681295de4ef1c66a57a3cc60",
    CHUNKED: "0d49316",
}
FILE_NAMES = {"val": "fineweb_val.pt", "train": "fineweb_train.pt"}
SHUFFLE_SEEDS = {"val": 42, "train": 43}  # both layouts: VAL_SHUFFLE_SEED / TRAIN_SHUFFLE_SEED
SLOWRUN_BOS = 50256  # every slowrun train.py asserts this BOS_ID

# The sha256 of each file as `prepare_data.py` pins them in EXPECTED_HASHES (qlabs-eng/slowrun).
PUBLISHED_SHA256: Mapping[str, Mapping[str, str]] = {
    CURRENT: {
        "val": "6868ed375b289a89c72c2f9df1ecbdcff700c4b9478ca806435d2dbfad8573b1",
        "train": "36e7c95c1e7f6ed952fb002d76a03044e8617fea7e696a68d7dc1ce78465dcaf",
    },
    CHUNKED: {
        "val": "80e7e430d3a7d10892c2ff32579370c5b65fbe833579d7ea5d55cbd0504c8462",
        "train": "e7e089aedbccb6865ce76c78453fa473c823969846fccd4000f5f13aef54e70e",
    },
}

_LAYOUT_KEYS = {
    CURRENT: ("tokens", "doc_starts", "bos_id", "seq_shuffle_seed", "seq_size"),
    CHUNKED: ("chunks", "valid_counts", "batch_size", "sequence_size"),
}


@dataclass(frozen=True)
class SlowrunSplit:
    """One split read from a slowrun file, in stream order."""

    tokens: np.ndarray  # uint16, a view of the memory-mapped file (current) or the un-shuffled stream (chunked)
    doc_starts: np.ndarray  # int64
    layout: str
    sha256: str
    dropped_tokens: int  # tokens of the split's budget the file does not hold (chunked layout's partial sequence)
    details: dict = field(default_factory=dict)  # the file's own metadata, recorded in the manifest


def published_layout(path: Path, split: str, expected: Mapping[str, Mapping[str, str]]) -> tuple[str, str]:
    """(layout, sha256) of a file whose sha256 is one of the expected ones for `split`; else refuse, naming both."""
    actual = sha256_file(path)
    for layout, hashes in expected.items():
        if hashes.get(split) == actual:
            return layout, actual
    listed = "; ".join(f"{layout} layout {hashes.get(split, '(none)')}" for layout, hashes in expected.items())
    raise DataError(
        f"{path}: sha256 {actual} is not a published hash of {path.name} (expected: {listed}; from "
        f"{SLOWRUN_REPOSITORY} prepare_data.py). The file is damaged, cut short or not slowrun's; "
        "re-run slowrun's prepare_data.py or use `slowrun prepare --track fineweb` to stream the data")


def _load(path: Path) -> dict:
    import pickle

    import torch

    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) torch file cannot be memory-mapped
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise DataError(f"{path}: not a torch file holding plain tensors and numbers ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: holds a {type(data).__name__}; slowrun's data files hold a dict")
    return data


def detect_layout(data: dict, path: Path) -> str:
    for layout, keys in _LAYOUT_KEYS.items():
        if all(key in data for key in keys):
            extra = sorted(set(data) - set(keys))
            if extra:
                raise DataError(f"{path}: unexpected keys {extra} beside slowrun's {layout} layout {list(keys)}")
            return layout
    raise DataError(
        f"{path}: keys {sorted(map(str, data))} are neither slowrun's current layout "
        f"{list(_LAYOUT_KEYS[CURRENT])} nor its older chunked layout {list(_LAYOUT_KEYS[CHUNKED])}")


def _vector(value, name: str, dtype, path: Path) -> np.ndarray:
    import torch

    if not isinstance(value, torch.Tensor) or value.dim() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise DataError(f"{path}: {name} should be a 1-D tensor, is {shape}")
    array = value.numpy()
    if array.dtype != np.dtype(dtype):
        raise DataError(f"{path}: {name} is {array.dtype}, slowrun writes {np.dtype(dtype).name}")
    return array


def _integer(value, name: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{path}: {name} should be an integer, is {type(value).__name__}")
    return value


def _check_documents(tokens: np.ndarray, starts: np.ndarray, bos_id: int, path: Path) -> None:
    """Documents tile the stream: the first starts at 0, starts increase, BOS stands at each and nowhere else."""
    if tokens.size == 0 or starts.size == 0 or starts[0] != 0:
        raise DataError(f"{path}: the stream must be non-empty with its first document at 0")
    if np.any(np.diff(starts) <= 0) or starts[-1] >= tokens.size:
        raise DataError(f"{path}: doc_starts must increase strictly and stay below {tokens.size:,}")
    if not np.all(tokens[starts] == bos_id):
        raise DataError(f"{path}: some document does not start with BOS {bos_id}")
    bos_count = int(np.count_nonzero(tokens == bos_id))
    if bos_count != starts.size:
        raise DataError(f"{path}: BOS {bos_id} stands at {bos_count:,} positions, doc_starts lists "
                        f"{starts.size:,} documents")


def read_current(data: dict, path: Path, split: str, bos_id: int, sha: str) -> SlowrunSplit:
    tokens = _vector(data["tokens"], "tokens", np.uint16, path)
    starts = _vector(data["doc_starts"], "doc_starts", np.int64, path)
    file_bos = _integer(data["bos_id"], "bos_id", path)
    if file_bos != bos_id:
        raise DataError(f"{path}: bos_id {file_bos}, the track's tokenizer has {bos_id}")
    _check_documents(tokens, starts, bos_id, path)
    details = {"seq_shuffle_seed": _integer(data["seq_shuffle_seed"], "seq_shuffle_seed", path),
               "seq_size": _integer(data["seq_size"], "seq_size", path)}
    return SlowrunSplit(tokens, starts, CURRENT, sha, 0, details)


def unshuffle_sequences(shuffled_rows: Sequence[np.ndarray], seed: int, sequence_size: int) -> np.ndarray:
    """The stream from sequences shuffled by `np.random.seed(seed); np.random.shuffle(rows)`.

    That shuffle puts row `permutation(n)[k]` of the stream at row k (the legacy generator draws the same
    numbers for both), so each shuffled row goes back to its place: one output array, written in place.
    `shuffled_rows` are blocks of whole rows, flattened, in file order.
    """
    count = sum(block.size // sequence_size for block in shuffled_rows)
    order = np.random.RandomState(seed).permutation(count)
    stream = np.empty((count, sequence_size), dtype=np.uint16)
    row = 0
    for block in shuffled_rows:
        rows = block.reshape(-1, sequence_size)
        stream[order[row : row + rows.shape[0]]] = rows
        row += rows.shape[0]
    return stream.reshape(-1)


def read_chunked(data: dict, path: Path, split: str, bos_id: int, sha: str, budget: int) -> SlowrunSplit:
    batch_size = _integer(data["batch_size"], "batch_size", path)
    sequence_size = _integer(data["sequence_size"], "sequence_size", path)
    chunks, counts = data["chunks"], data["valid_counts"]
    if not isinstance(chunks, list) or not isinstance(counts, list) or len(chunks) != len(counts) or not chunks:
        raise DataError(f"{path}: chunks and valid_counts should be non-empty lists of one length")
    blocks = []
    for index, (chunk, valid) in enumerate(zip(chunks, counts)):
        rows = _vector(chunk, f"chunks[{index}]", np.uint16, path)
        valid = _integer(valid, f"valid_counts[{index}]", path)
        full = index < len(chunks) - 1
        if rows.size != batch_size * sequence_size or not 0 < valid <= batch_size or (full and valid != batch_size):
            raise DataError(f"{path}: chunk {index} holds {rows.size:,} tokens with {valid} valid sequences; "
                            f"each chunk holds batch_size x sequence_size = {batch_size} x {sequence_size} tokens, "
                            "all valid but the last")
        blocks.append(rows[: valid * sequence_size])
    tokens = unshuffle_sequences(blocks, SHUFFLE_SEEDS[split], sequence_size)
    if tokens[0] != bos_id:
        raise DataError(f"{path}: un-shuffled with seed {SHUFFLE_SEEDS[split]}, the stream does not start with "
                        f"BOS {bos_id}; the file was not shuffled the way prepare_data.py does it")
    starts = np.flatnonzero(tokens == bos_id).astype(np.int64)
    details = {"batch_size": batch_size, "sequence_size": sequence_size,
               "sequence_shuffle_seed": SHUFFLE_SEEDS[split]}
    return SlowrunSplit(tokens, starts, CHUNKED, sha, budget - tokens.size, details)


def read_slowrun_file(path: Path, split: str, layout: str, sha: str, bos_id: int, budget: int) -> SlowrunSplit:
    data = _load(path)
    found = detect_layout(data, path)
    if found != layout:
        raise DataError(f"{path}: its sha256 is the {layout} layout's, its keys are the {found} layout's")
    if layout == CURRENT:
        split_data = read_current(data, path, split, bos_id, sha)
        if split_data.tokens.size != budget:
            raise DataError(f"{path}: holds {split_data.tokens.size:,} tokens; the track's {split} split takes "
                            f"{budget:,} (was prepare_data.py run with other --{split}_tokens?)")
        return split_data
    split_data = read_chunked(data, path, split, bos_id, sha, budget)
    whole = budget // split_data.details["sequence_size"] * split_data.details["sequence_size"]
    if split_data.tokens.size != whole:
        raise DataError(f"{path}: holds {split_data.tokens.size:,} tokens in whole sequences; the track's {split} "
                        f"split of {budget:,} tokens gives {whole:,} (was prepare_data.py run with other "
                        f"--{split}_tokens?)")
    return split_data


@dataclass
class _ImportedSplits:
    """The splits in the shape `harness.data.prepare.write_splits` writes from (what its filler holds)."""

    arrays: list
    doc_starts: list
    first_origin: list
    last_origin: list
    truncated: list


def _origins(source: FinewebSource, splits: Sequence[SlowrunSplit]) -> tuple[list, list]:
    """First and last stream document of each split, named as FinewebSource names them; None where the files
    cannot say (documents dropped with the chunked layout's validation tail shift every later index)."""
    first, last, index, known = [], [], 0, True
    for part in splits:
        name = (lambda i: f"{source.dataset}/{source.config}[{i}]") if known else (lambda i: None)
        first.append(name(index))
        last.append(name(index + part.doc_starts.size - 1))
        index += part.doc_starts.size
        known = known and part.dropped_tokens == 0
    return first, last


def import_slowrun_files(track: Track, folder: str | Path, out: str | Path, *,
                         expected_sha256: Mapping[str, Mapping[str, str]] = PUBLISHED_SHA256,
                         source_override: Sequence[str] | None = None, gpt2_ranks: str | None = None,
                         force: bool = False, log=None) -> PrepareResult:
    """Prepare `track` into `out` from slowrun's `fineweb_val.pt` and `fineweb_train.pt` in `folder`.

    `expected_sha256` maps layout -> split -> the file hash accepted (default: the published ones).
    `source_override` describes where the documents came from when they are not the track's own source
    (as `prepare_track` would describe it), so an import compares with a streamed preparation of them.
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    folder, out = Path(folder), Path(out)
    if track.source.kind != "fineweb" or track.tokenizer.kind != "gpt2":
        raise DataError(f"track {track.name!r} reads {track.source.kind} data with a {track.tokenizer.kind} "
                        "tokenizer; slowrun's files hold FineWeb in GPT-2 ids: import them into --track fineweb")
    source = build_source(track, source_override)
    request = prepare_request(track, source)
    check_output_folder(out, request, force)
    paths = {split: folder / FILE_NAMES[split] for split in SPLITS}
    for path in paths.values():
        if not path.is_file():
            raise DataError(f"{path}: not found; --from-slowrun takes the folder holding slowrun's "
                            f"{FILE_NAMES['val']} and {FILE_NAMES['train']} (its fineweb_data/)")
    layouts = {split: published_layout(paths[split], split, expected_sha256) for split in SPLITS}
    if layouts["val"][0] != layouts["train"][0]:
        raise DataError(f"{folder}: {FILE_NAMES['val']} is in the {layouts['val'][0]} layout, "
                        f"{FILE_NAMES['train']} in the {layouts['train'][0]} layout; import one pair")
    tokenizer, _ = build_tokenizer(track, source, gpt2_ranks, log)
    budgets = {"val": track.val_tokens, "train": track.train_tokens}
    splits = [read_slowrun_file(paths[s], s, *layouts[s], tokenizer.bos_id, budgets[s]) for s in SPLITS]
    for part, split in zip(splits, SPLITS):
        top = int(part.tokens.max())
        if top >= tokenizer.vocab_size:
            raise DataError(f"{paths[split]}: holds token id {top}, outside GPT-2's {tokenizer.vocab_size} ids")
        if part.dropped_tokens:
            log(f"{paths[split].name}: the {part.layout} layout kept whole sequences only; "
                f"{part.dropped_tokens:,} tokens of the {budgets[split]:,}-token split are not in the file")

    first, last = _origins(source, splits)
    filled = _ImportedSplits([p.tokens for p in splits], [p.doc_starts for p in splits], first, last,
                             [None for _ in splits])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = write_splits(tmp, track, source, tokenizer, filled, request, np.uint16)
        for name in SPLITS:
            manifest["splits"][name]["last_truncated"] = None  # the files do not say whether it was cut
        manifest["imported_from"] = {
            "kind": "slowrun-files",
            "repository": SLOWRUN_REPOSITORY,
            "layout": splits[0].layout,
            "layout_commit": LAYOUT_COMMITS[splits[0].layout],
            "files": {
                name: {"name": FILE_NAMES[name], "sha256": part.sha256,
                       "published": part.sha256 == PUBLISHED_SHA256[part.layout][name],
                       "dropped_tokens": part.dropped_tokens, **part.details}
                for name, part in zip(SPLITS, splits)
            },
        }
        write_manifest(tmp, manifest)
        result = move_into_place(tmp, out, manifest, force, log)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log(official_status(track.name, manifest))
    return result


def official_status(track_name: str, manifest: dict) -> str:
    """What the official-data table (harness/rules/official_hashes.py) says about an imported folder."""
    data_hash = manifest["data_hash"]
    official = official_hashes(track_name)
    if official is not None:
        verdict = "is" if data_hash in official else "is NOT"
        return f"data hash {data_hash} {verdict} the official data of track {track_name!r}"
    files = manifest["imported_from"]["files"].values()
    if manifest["imported_from"]["layout"] == CURRENT and all(f["published"] for f in files):
        return (f"data hash {data_hash}: the published slowrun files; track {track_name!r} lists no official "
                "data yet, and this is the hash to list for it in harness/rules/official_hashes.py")
    return f"data hash {data_hash}; track {track_name!r} lists no official data yet"


def export_slowrun_files(prepared: str | Path, out: str | Path, *, force: bool = False, log=None) -> list[Path]:
    """Write a prepared split as slowrun's current-layout `fineweb_val.pt` and `fineweb_train.pt` in `out`."""
    log = log or (lambda message: print(message, file=sys.stderr))
    prepared, out = Path(prepared), Path(out)
    manifest = read_manifest(prepared)
    problems = verify_prepared(prepared)
    if problems:
        raise DataError(f"{prepared}: prepared data is damaged: " + "; ".join(problems))
    tokenizer = manifest["tokenizer"]
    if tokenizer["kind"] != "gpt2" or tokenizer["bos_id"] != SLOWRUN_BOS or manifest["dtype"] != "uint16":
        raise DataError(f"{prepared}: track {manifest['track']['name']!r} uses {tokenizer['kind']} ids "
                        f"(BOS {tokenizer['bos_id']}, {manifest['dtype']}); slowrun's train.py reads GPT-2 "
                        f"uint16 ids with BOS {SLOWRUN_BOS}")
    targets = [out / FILE_NAMES[split] for split in SPLITS]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise DataError(f"{', '.join(existing)}: already there; pass --force to replace or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".slowrun-export-", dir=out))
    try:
        for split, target in zip(SPLITS, targets):
            _export_split(prepared, manifest, split, staging / target.name)
            (staging / target.name).replace(target)
            info = manifest["splits"][split]
            log(f"{target}: {info['tokens']:,} tokens, {info['documents']:,} documents, "
                f"sha256 {sha256_file(target)}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets


def _export_split(prepared: Path, manifest: dict, split: str, target: Path) -> None:
    """Saved under its final name: torch names the archive inside the file after it, so the bytes match
    what prepare_data.py writes for the same arrays."""
    import torch

    info = manifest["splits"][split]
    tokens = np.fromfile(prepared / info["tokens_file"], dtype=np.uint16)
    starts = np.fromfile(prepared / info["docs_file"], dtype=np.int64)
    torch.save({
        "tokens": torch.from_numpy(tokens),
        "doc_starts": torch.from_numpy(starts),
        "bos_id": int(manifest["tokenizer"]["bos_id"]),
        "seq_shuffle_seed": SHUFFLE_SEEDS[split],
        "seq_size": int(manifest["seq_len"]) + 1,
    }, target)
