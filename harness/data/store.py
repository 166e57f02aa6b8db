"""Read a prepared split without copying it: windows, documents and per-epoch document orders.

Windows are disjoint chunks of seq_len + 1 tokens (seq_len inputs, seq_len targets) cut across document
boundaries, exactly as the evaluation scores them. Training epochs shuffle whole documents with a seed
and concatenate them before cutting, so every epoch sees every document once in a fresh order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from harness.data.manifest import read_manifest, verify_prepared
from harness.errors import DataError


@dataclass(frozen=True)
class TokenStore:
    """A contiguous range of documents of one split (the whole split unless sliced with `documents`)."""

    tokens: np.ndarray  # memmap over the split's tokens, or a view of it
    doc_starts: np.ndarray  # start offsets of the documents in `tokens`, first is 0
    bos_id: int
    vocab_size: int

    @classmethod
    def open(cls, folder: str | Path, split: str, verify: bool = False) -> "TokenStore":
        folder = Path(folder)
        manifest = read_manifest(folder)
        if split not in manifest["splits"]:
            raise DataError(f"{folder}: no split {split!r} (has {', '.join(manifest['splits'])})")
        if verify:
            problems = verify_prepared(folder)
            if problems:
                raise DataError(f"{folder}: prepared data is damaged: " + "; ".join(problems))
        info = manifest["splits"][split]
        tokens = np.memmap(folder / info["tokens_file"], dtype=manifest["dtype"], mode="r", shape=(info["tokens"],))
        starts = np.memmap(folder / info["docs_file"], dtype=np.int64, mode="r", shape=(info["documents"],))
        return cls(tokens, starts, manifest["tokenizer"]["bos_id"], manifest["tokenizer"]["vocab_size"])

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_documents(self) -> int:
        return int(self.doc_starts.shape[0])

    @cached_property
    def doc_ends(self) -> np.ndarray:
        return np.append(np.asarray(self.doc_starts[1:]), self.n_tokens)

    def document(self, index: int) -> np.ndarray:
        """A zero-copy view of document `index`, BOS first."""
        return self.tokens[int(self.doc_starts[index]) : int(self.doc_ends[index])]

    def documents(self, start: int, stop: int | None = None) -> "TokenStore":
        """The documents [start, stop) as a store of their own (zero-copy)."""
        stop = self.n_documents if stop is None else stop
        if not 0 <= start < stop <= self.n_documents:
            raise DataError(f"document range {start}..{stop} is outside 0..{self.n_documents}")
        offset = int(self.doc_starts[start])
        end = int(self.doc_ends[stop - 1])
        return TokenStore(self.tokens[offset:end], np.asarray(self.doc_starts[start:stop]) - offset,
                          self.bos_id, self.vocab_size)

    def num_windows(self, seq_len: int) -> int:
        return self.n_tokens // (seq_len + 1)

    def windows(self, seq_len: int) -> np.ndarray:
        """All full windows as a (n, seq_len + 1) zero-copy view; the tail that does not fill one is unused."""
        n = self.num_windows(seq_len)
        return self.tokens[: n * (seq_len + 1)].reshape(n, seq_len + 1)

    def document_order(self, seed: int, epoch: int) -> np.ndarray:
        """The permutation of documents for `epoch`; a pure function of (seed, epoch)."""
        rng = np.random.default_rng([seed, epoch, 0xE90C])
        return rng.permutation(self.n_documents)

    def epoch_tokens(self, seed: int, epoch: int) -> np.ndarray:
        """All tokens of the split with documents in the epoch's order (one copy, made once per epoch)."""
        order = self.document_order(seed, epoch)
        starts = np.asarray(self.doc_starts)[order].tolist()
        ends = self.doc_ends[order].tolist()
        tokens = np.asarray(self.tokens)  # a plain view: slicing a memmap costs microseconds per call
        out = np.empty(self.n_tokens, dtype=self.tokens.dtype)
        pos = 0
        for begin, end in zip(starts, ends):
            out[pos : pos + end - begin] = tokens[begin:end]
            pos += end - begin
        return out
