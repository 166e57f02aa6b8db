"""Prepare a track: stream documents, tokenize, cut the validation and training splits, write, hash.

Split rules (DESIGN.md, "Data"): BOS before every document, no EOS; validation takes documents from the
start of the stream until it holds `val_tokens` (the document that reaches the budget is truncated);
training continues from the next document and is cut the same way at `train_tokens`; no document is
in both. Everything is written into a temporary folder beside the output and renamed into place only
when complete, so an error never leaves a half-written split behind and never touches what was there.

Documents are streamed: reading stops once both splits are full, and a document longer than
`long_documents.PIECE_CHARS` is encoded in pieces, only as far as the splits can take it, with exactly
the tokens of the whole document (see `harness.data.long_documents`).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from harness import __version__
from harness.data.documents import Document, DocumentSource
from harness.data.fineweb import FinewebSource
from harness.data.local_files import LocalFilesSource, expand_paths
from harness.data.long_documents import encode_documents, utf8_length
from harness.data.manifest import (
    FORMAT,
    SPLITS,
    compute_data_hash,
    read_manifest,
    sha256_array,
    write_manifest,
)
from harness.data.synthetic import SyntheticLanguage, SyntheticSource
from harness.data.tokenizers import ByteBpeTokenizer, Gpt2Tokenizer, IdentityTokenizer, Tokenizer
from harness.errors import DataError
from harness.rules.tracks import Track

ENCODE_BATCH = 512
BPE_FIXED_POINT_ROUNDS = 6
POOL_BYTES_PER_TOKEN = 8


@dataclass(frozen=True)
class PrepareResult:
    folder: Path
    manifest: dict
    reused: bool  # True when an identical prepared track was already there


def build_source(track: Track, source_override: Sequence[str] | None = None,
                 text_field: str | None = None) -> DocumentSource:
    spec = track.source
    if spec.redacted:
        raise DataError(f"track {track.name!r}: this spec is the method's redacted view (Track.public_dict), "
                        "which does not say where its data comes from; prepare from the full track spec "
                        "(slowrun prepare --track NAME)")
    field = text_field or spec.text_field
    if source_override:
        if spec.kind == "fineweb" and all(str(p).endswith((".parquet", ".json", ".jsonl")) for p in source_override):
            return FinewebSource(text_field=field, data_files=tuple(str(p) for p in expand_paths(source_override)))
        return LocalFilesSource(tuple(expand_paths(source_override)), field, spec.txt_separator)
    if spec.kind == "fineweb":
        return FinewebSource(spec.dataset, spec.config, spec.split, field)
    if spec.kind == "synthetic":
        return SyntheticSource(SyntheticLanguage(**dict(spec.synthetic)))
    try:
        paths = expand_paths(spec.paths, track.source_root())
    except DataError as exc:
        raise DataError(f"{exc} — track {track.name!r} reads {', '.join(spec.paths)} under {track.source_root()}; "
                        "pass --source FILES or set $SLOWRUN_DATA_ROOT") from None
    return LocalFilesSource(tuple(paths), field, spec.txt_separator)


def encode_stream(docs: Iterable[Document], tokenizer: Tokenizer, cap: int,
                  batch_size: int = ENCODE_BATCH) -> Iterator[tuple[Sequence[int], str]]:
    """(token ids, origin) per document, tokenized in batches of `batch_size` (they change no token).

    Reading the next batch (JSON parsing, in Python) overlaps with encoding the current one (native code
    that releases the GIL). An empty document still yields its BOS: the rule is a BOS before every
    document, and dropping some would make the split depend on a filter nobody asked for. A long
    document yields only a prefix of at least `cap` tokens (`encode_documents`): `cap` is the largest
    split budget, so it is cut exactly where the whole document would be.
    """
    from concurrent.futures import ThreadPoolExecutor

    iterator = iter(docs)

    def encode(batch: list[Document]) -> list:
        try:
            return encode_documents(tokenizer, [d.content for d in batch], cap)
        except (UnicodeError, ValueError, TypeError):
            return [_encode_one(tokenizer, d, cap) for d in batch]  # find and name the offending document

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="slowrun-pipeline") as stage:
        batch = list(itertools.islice(iterator, batch_size))
        while batch:
            pending = stage.submit(encode, batch)
            upcoming = list(itertools.islice(iterator, batch_size))
            yield from zip(pending.result(), (d.origin for d in batch))
            batch = upcoming


def _encode_one(tokenizer: Tokenizer, doc: Document, cap: int) -> Sequence[int]:
    try:
        return encode_documents(tokenizer, [doc.content], cap)[0]
    except (UnicodeError, ValueError, TypeError) as exc:
        raise DataError(f"{doc.origin}: cannot tokenize this document ({exc}); fix or remove it") from None


class SplitFiller:
    """Accumulates BOS-prefixed documents into fixed-size splits, truncating the last one of each."""

    def __init__(self, budgets: Sequence[int], dtype: np.dtype, bos_id: int, progress):
        self.budgets = list(budgets)
        self.arrays = [np.empty(b, dtype=dtype) for b in budgets]
        self.doc_starts: list[list[int]] = [[] for _ in budgets]
        self.first_origin: list[str | None] = [None for _ in budgets]
        self.last_origin: list[str | None] = [None for _ in budgets]
        self.truncated = [False for _ in budgets]
        self.split = 0
        self.pos = 0
        self.bos_id = bos_id
        self.dtype = dtype
        self.progress = progress
        self.documents_read = 0

    @property
    def full(self) -> bool:
        return self.split >= len(self.budgets)

    def add(self, ids: Sequence[int], origin: str) -> None:
        self.documents_read += 1
        budget = self.budgets[self.split]
        array = self.arrays[self.split]
        take = min(1 + len(ids), budget - self.pos)
        array[self.pos] = self.bos_id
        array[self.pos + 1 : self.pos + take] = ids[: take - 1]
        self.doc_starts[self.split].append(self.pos)
        if self.first_origin[self.split] is None:
            self.first_origin[self.split] = origin
        self.last_origin[self.split] = origin
        self.pos += take
        self.progress.update(take)
        if self.pos == budget:
            self.truncated[self.split] = take < 1 + len(ids)
            self.split += 1
            self.pos = 0

    def shortfall_message(self, source: DocumentSource) -> str:
        placed = sum(self.budgets[: self.split]) + self.pos
        return shortfall_message(describe_short(source), self.documents_read, placed, self.budgets)


def shortfall_message(source_name: str, documents: int, tokens: int, budgets: Sequence[int]) -> str:
    what = "is empty" if documents == 0 else f"ran out after {documents:,} documents, which filled only {tokens:,} tokens"
    return (f"source {source_name} {what}; the track needs {sum(budgets):,} "
            f"({budgets[0]:,} validation + {budgets[1]:,} training). "
            "Give more data or use a track with smaller budgets.")


def describe_short(source: DocumentSource) -> str:
    info = source.describe()
    if info.get("kind") == "local":
        files = getattr(source, "paths", ())
        return ", ".join(str(p) for p in files) or "(no files)"
    return info.get("dataset", info.get("kind", "?"))


def fill_splits(encoded: Iterable[tuple[Sequence[int], str]], budgets: Sequence[int], dtype, bos_id: int,
                source: DocumentSource, progress) -> SplitFiller:
    filler = SplitFiller(budgets, np.dtype(dtype), bos_id, progress)
    for ids, origin in encoded:
        filler.add(ids, origin)
        if filler.full:
            return filler
    raise DataError(filler.shortfall_message(source))


def split_document_ranges(lengths: Iterable[int], budgets: Sequence[int]) -> tuple[list[tuple[int, int]] | None, int]:
    """Document index ranges [start, end) of each split, from each document's token count (BOS excluded).

    The same rule as the filler, in counts only: used to find which documents a tokenizer may see.
    Returns (None, tokens placed) when the documents do not fill the budgets. A count only matters up to
    the budget it lands in, so a long document's may be any number of at least the largest budget.
    """
    ranges: list[tuple[int, int]] = []
    start = pos = 0
    for index, length in enumerate(lengths):
        pos += 1 + length
        if pos >= budgets[len(ranges)]:
            ranges.append((start, index + 1))
            start, pos = index + 1, 0
            if len(ranges) == len(budgets):
                return ranges, sum(budgets)
    return None, sum(budgets[: len(ranges)]) + pos


class DocumentSample:
    """The documents a byte-level BPE track is prepared from: a prefix of the source, read as needed.

    It starts as the shortest prefix holding `step` bytes of UTF-8 (all of the source if it holds less):
    a small BPE never produces tokens that average anywhere near POOL_BYTES_PER_TOKEN bytes, so the splits
    nearly always fit in it, and training and encoding only it keeps preparation fast. When they do not
    (a first document larger than the whole sample, say), `grow` reads at least another `step` bytes;
    only a source that runs out is too small.
    """

    def __init__(self, source: Iterable[Document], step: int):
        self._rest = iter(source)
        self.step = step
        self.docs: list[Document] = []
        self.grow()

    @property
    def texts(self) -> list[str]:
        return [d.content for d in self.docs]

    def grow(self) -> bool:
        """Read documents until another `step` bytes are in or the source ends; False if none were left."""
        added, before = 0, len(self.docs)
        while added < self.step:
            doc = next(self._rest, None)
            if doc is None:
                break
            self.docs.append(doc)
            added += utf8_length(doc.content)
        return len(self.docs) > before


def _token_counts(tokenizer: ByteBpeTokenizer, texts: Sequence[str], cap: int) -> list[int]:
    """Each text's token count (a long one's counted to at least `cap`), one batch of ids held at a time."""
    counts: list[int] = []
    for start in range(0, len(texts), ENCODE_BATCH):
        counts.extend(len(ids) for ids in encode_documents(tokenizer, texts[start : start + ENCODE_BATCH], cap))
    return counts


def _split_ranges(sample: DocumentSample, tokenizer: ByteBpeTokenizer, budgets: Sequence[int],
                  source_name: str) -> list[tuple[int, int]]:
    """The splits' document ranges under `tokenizer`, growing the sample until both splits fit in it."""
    cap = max(budgets)
    counts = _token_counts(tokenizer, sample.texts, cap)
    while True:
        ranges, placed = split_document_ranges(counts, budgets)
        if ranges is not None:
            return ranges
        known = len(counts)
        if not sample.grow():
            raise DataError(shortfall_message(source_name, known, placed, budgets))
        counts += _token_counts(tokenizer, sample.texts[known:], cap)


def train_bpe_on_training_split(sample: DocumentSample, track: Track, log,
                                source_name: str = "the source") -> ByteBpeTokenizer:
    """A byte-level BPE trained on exactly the documents of the training split it itself defines.

    The training split depends on the tokenizer (budgets are in tokens) and the tokenizer on the
    training split, so iterate to a fixed point: train on the training documents found with the
    previous tokenizer until the range stops moving. Validation documents are never seen by the
    final tokenizer, which would otherwise leak validation text into the vocabulary. On return the
    sample holds both splits under the returned tokenizer.
    """
    budgets = (track.val_tokens, track.train_tokens)
    vocab = track.tokenizer.vocab_size
    tokenizer = ByteBpeTokenizer.train(sample.texts, vocab)  # bootstrap only: finds a first training range
    train_range = None
    for round_ in range(1, BPE_FIXED_POINT_ROUNDS + 1):
        new_range = _split_ranges(sample, tokenizer, budgets, source_name)[1]
        if new_range == train_range:
            log(f"tokenizer: byte-level BPE ({vocab}) trained on training documents {train_range[0]}..{train_range[1] - 1}"
                f" (fixed point after {round_ - 1} rounds)")
            return tokenizer
        train_range = new_range
        tokenizer = ByteBpeTokenizer.train(sample.texts[train_range[0] : train_range[1]], vocab)
    raise DataError(
        f"track {track.name!r}: the BPE training range did not settle in {BPE_FIXED_POINT_ROUNDS} rounds; "
        "change the budgets slightly"
    )


def build_tokenizer(track: Track, source: DocumentSource, gpt2_ranks: str | None, log,
                     tokenizer_from: Path | None = None):
    """The tokenizer and, for BPE tracks, the documents read to train it (they hold both splits).

    `tokenizer_from` reuses the BPE saved with another preparation of the same track (calibration
    prepares more training data behind the same validation split and must not retrain the vocabulary).
    """
    kind = track.tokenizer.kind
    if kind == "byte-bpe" and tokenizer_from is not None:
        tokenizer = ByteBpeTokenizer.load(tokenizer_from)
        log(f"tokenizer: byte-level BPE ({tokenizer.vocab_size}) reused from {tokenizer_from}")
        return tokenizer, None
    if kind == "gpt2":
        return Gpt2Tokenizer(gpt2_ranks or track.tokenizer.ranks_path), None
    if kind == "identity":
        if not isinstance(source, SyntheticSource):
            raise DataError(f"track {track.name!r}: the identity tokenizer needs the synthetic source")
        lang = source.language
        return IdentityTokenizer(lang.vocab_size, lang.bos_id, source.describe()), None
    # Byte-level BPE tracks are small by design: read the documents the splits need once, reuse them.
    sample = DocumentSample(source, POOL_BYTES_PER_TOKEN * (track.val_tokens + track.train_tokens))
    if not sample.docs:
        raise DataError(f"source {describe_short(source)} is empty; give files with documents in them")
    return train_bpe_on_training_split(sample, track, log, describe_short(source)), sample.docs


def token_progress(total: int, desc: str, enabled: bool):
    from harness.common.progress import progress

    return progress(total, desc=desc, unit="tok", enabled=enabled, stream=sys.stderr)


def check_output_folder(out: Path, request: dict, force: bool, *, read=read_manifest, flag: str = "--out",
                        kind: str = "a prepared track", describe=None) -> None:
    """Refuse early, before any work, when the output folder holds something else than what `request` would
    write there (`read` reads its manifest; `describe(manifest)` says what it holds instead)."""
    if not out.exists() or force:
        return
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another {flag} or pass --force")
    if not any(out.iterdir()):
        return
    try:
        existing = read(out)
    except DataError:
        raise DataError(f"{out}: exists and is not {kind}; choose another {flag} or pass --force") from None
    if existing.get("request") != request:
        held = describe(existing) if describe else (f"data hash {existing.get('data_hash', '?')[:16]}…, "
                                                    f"track {existing['track'].get('name')!r}")
        raise DataError(f"{out}: already holds something else ({held}); pass --force to replace it or choose "
                        f"another {flag}")


def prepare_request(track: Track, source: DocumentSource) -> dict:
    """What was asked, as the manifest records it (and compares it with a folder's earlier preparation)."""
    request = {"track": track.to_dict(), "source": source.describe()}
    request["track"]["source"]["base_dir"] = None  # where files were found is not part of what was asked
    return json.loads(json.dumps(request))  # the form it takes in the manifest, to compare with it


def prepare_track(track: Track, out: str | os.PathLike, *, source_override: Sequence[str] | None = None,
                  text_field: str | None = None, gpt2_ranks: str | None = None, force: bool = False,
                  progress: bool = True, log=None, tokenizer_from: str | os.PathLike | None = None) -> PrepareResult:
    """Prepare `track` into `out`; see the module docstring for the rules and the guarantees."""
    log = log or (lambda message: print(message, file=sys.stderr))
    out = Path(out)
    source = build_source(track, source_override, text_field)
    request = prepare_request(track, source)
    check_output_folder(out, request, force)

    tokenizer, materialised = build_tokenizer(track, source, gpt2_ranks, log,
                                               Path(tokenizer_from) if tokenizer_from else None)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32  # every id fits: ids < vocab_size
    budgets = (track.val_tokens, track.train_tokens)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with token_progress(sum(budgets), f"prepare {track.name}", progress) as bar:
            encoded = encode_stream(materialised if materialised is not None else source, tokenizer, max(budgets))
            filler = fill_splits(encoded, budgets, dtype, tokenizer.bos_id, source, bar)
        manifest = write_splits(tmp, track, source, tokenizer, filler, request, dtype)
        return move_into_place(tmp, out, manifest, force, log)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_splits(tmp: Path, track: Track, source: DocumentSource, tokenizer: Tokenizer,
                  filler: SplitFiller, request: dict, dtype) -> dict:
    splits = {}
    for name, tokens, starts, first, last, truncated in zip(
        SPLITS, filler.arrays, filler.doc_starts, filler.first_origin, filler.last_origin, filler.truncated
    ):
        docs = np.asarray(starts, dtype=np.int64)
        tokens.tofile(tmp / f"{name}.tokens.bin")
        docs.tofile(tmp / f"{name}.docs.bin")
        splits[name] = {
            "tokens": int(tokens.size),
            "documents": int(docs.size),
            "tokens_file": f"{name}.tokens.bin",
            "docs_file": f"{name}.docs.bin",
            "tokens_sha256": sha256_array(tokens),
            "docs_sha256": sha256_array(docs),
            "first_document": first,
            "last_document": last,
            "last_truncated": bool(truncated),
        }
    train_starts = np.asarray(filler.doc_starts[1], dtype=np.int64)
    fitness_docs = int(np.searchsorted(train_starts, track.fitness_tokens, side="left")) if track.fitness_tokens else 0
    if fitness_docs >= len(train_starts):
        raise DataError(f"track {track.name!r}: fitness_tokens={track.fitness_tokens:,} would take the whole "
                        "training split; lower it")
    fitness_tokens = int(train_starts[fitness_docs]) if fitness_docs else 0
    extra_files = tokenizer.save(tmp)
    token_bytes = tokenizer.token_bytes()
    if token_bytes is not None:
        token_bytes.astype(np.int32).tofile(tmp / "token_bytes.bin")
        extra_files.append("token_bytes.bin")
    manifest = {
        "format": FORMAT,
        "harness_version": __version__,
        "track": {"name": track.name, "description": track.description},
        "request": request,
        "source": source.describe(),
        "tokenizer": {**tokenizer.identity(), "files": extra_files},
        "dtype": np.dtype(dtype).name,
        "seq_len": track.seq_len,
        "splits": splits,
        "fitness": {"documents": fitness_docs, "tokens": fitness_tokens},
    }
    if isinstance(source, SyntheticSource):
        manifest["best_val_loss"] = best_val_loss(source.language, filler.arrays[0], track.seq_len)
        manifest["best_val_loss_definition"] = (
            "mean over the validation windows' targets of -log P(target | its document so far) under the "
            "true language: a floor no model can beat")
    manifest["data_hash"] = compute_data_hash(manifest)
    write_manifest(tmp, manifest)
    return manifest


def best_val_loss(language: SyntheticLanguage, val_tokens: np.ndarray, seq_len: int) -> float:
    logp = language.true_logprobs(val_tokens)  # entry j-1 is the target at position j
    width = seq_len + 1
    n_windows = val_tokens.size // width
    positions = (np.arange(n_windows)[:, None] * width + np.arange(1, width)[None, :]).reshape(-1)
    return float(-logp[positions - 1].mean())


def move_into_place(tmp: Path, out: Path, manifest: dict, force: bool, log) -> PrepareResult:
    occupied = (out.is_dir() and any(out.iterdir())) or (out.exists() and not out.is_dir())
    if occupied:
        try:
            existing = read_manifest(out)
        except DataError:
            existing = None
        if existing is not None and existing.get("data_hash") == manifest["data_hash"]:
            log(f"{out}: already prepared with the same data hash {manifest['data_hash'][:16]}…; kept as is")
            return PrepareResult(out, existing, reused=True)
        if not force:
            raise DataError(
                f"{out}: holds data with hash {(existing or {}).get('data_hash', 'unknown')[:16]}…, the new "
                f"preparation hashes to {manifest['data_hash'][:16]}…; pass --force to replace it"
            )
    swap_into_place(tmp, out)
    log(f"{out}: prepared track {manifest['track']['name']!r}, data hash {manifest['data_hash'][:16]}…")
    return PrepareResult(out, manifest, reused=False)


def swap_into_place(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out` by renames, so `out` is always the old folder or the new one,
    never a mix: a folder already there is renamed aside first and removed only after the new one is in."""
    if (out.is_dir() and any(out.iterdir())) or (out.exists() and not out.is_dir()):
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
