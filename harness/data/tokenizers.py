"""Tokenizers a track can use: GPT-2 (tiktoken), a small byte-level BPE (tokenizers), and the identity.

Whatever produced it, a tokenizer's identity is a hash of what it does (every id's bytes, the split
pattern, the special tokens), not of the file it came from, so the same GPT-2 ranks found through
different paths give the same prepared data hash.
"""

from __future__ import annotations

import functools

import hashlib
import json
import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from harness.data.long_documents import training_pieces
from harness.errors import DataError

GPT2_RANKS_ENV = "SLOWRUN_GPT2_RANKS"
GPT2_BOS = 50256
# GPT-2's pre-tokenization pattern (as tiktoken writes it, with possessive quantifiers for speed).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def token_bytes(self) -> np.ndarray | None:
        """UTF-8 byte length of every id (BOS = 0), for bits per byte; None when ids are not text."""
        ...

    def identity(self) -> dict:
        """JSON-able description including a content `hash`; it becomes part of the data hash."""
        ...

    def save(self, folder: Path) -> list[str]:
        """Write whatever is needed to re-create the tokenizer into `folder`; return the file names."""
        ...


def _hash_token_table(pieces: Sequence[bytes], extra: dict) -> str:
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for piece in pieces:
        digest.update(len(piece).to_bytes(4, "little"))
        digest.update(piece)
    return digest.hexdigest()


_WORKERS = None


def _encode_workers():
    """One process-wide thread pool for encoding (None on a single core, where threads only cost)."""
    global _WORKERS
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores < 2:
        return None
    if _WORKERS is None:
        from concurrent.futures import ThreadPoolExecutor

        _WORKERS = ThreadPoolExecutor(max_workers=min(cores, 8), thread_name_prefix="slowrun-encode")
    return _WORKERS


def resolve_gpt2_ranks(explicit: str | os.PathLike | None = None) -> Path | None:
    """The GPT-2 ranks file: explicit path, then $SLOWRUN_GPT2_RANKS, else None (tiktoken's own cache)."""
    for candidate, how in ((explicit, "the explicit path"), (os.environ.get(GPT2_RANKS_ENV), f"${GPT2_RANKS_ENV}")):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise DataError(f"{path}: GPT-2 ranks file not found (given by {how})")
            return path
    return None


@functools.lru_cache(maxsize=4)
def _gpt2_encoding(path: str, size: int, mtime_ns: int):
    """The tiktoken Encoding of a ranks file, loaded once per process and file version (as tiktoken's own
    `get_encoding` caches its encodings): parsing 50K base64 ranks costs more than encoding a small track."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    try:
        ranks = load_tiktoken_bpe(path)
    except Exception as exc:
        raise DataError(f"{path}: not a tiktoken ranks file ({exc})") from None
    if len(ranks) != GPT2_BOS:
        raise DataError(f"{path}: has {len(ranks)} ranks; GPT-2's file has {GPT2_BOS}")
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: GPT2_BOS})


def _token_pieces(enc) -> list[bytes]:
    """The bytes of every ordinary token, computed once per Encoding object and kept on it."""
    pieces = getattr(enc, "_slowrun_pieces", None)
    if pieces is None:
        pieces = [enc.decode_single_token_bytes(i) for i in range(GPT2_BOS)]
        enc._slowrun_pieces = pieces
    return pieces


class Gpt2Tokenizer:
    """GPT-2 BPE through tiktoken, with BOS = <|endoftext|> = 50256."""

    vocab_size = 50257
    bos_id = GPT2_BOS

    def __init__(self, ranks_path: str | os.PathLike | None = None):
        import tiktoken

        path = resolve_gpt2_ranks(ranks_path)
        if path is None:
            try:
                self._enc = tiktoken.get_encoding("gpt2")
            except Exception as exc:
                raise DataError(
                    f"cannot load GPT-2's ranks through tiktoken ({exc}); pass the r50k_base.tiktoken file "
                    f"with --gpt2-ranks or set ${GPT2_RANKS_ENV}"
                ) from None
            self.origin = "tiktoken:gpt2"
        else:
            stat = path.stat()
            self._enc = _gpt2_encoding(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
            self.origin = str(path)
        self._identity: dict | None = None
        self._piece_cache: list[bytes] | None = None

    @property
    def encoding(self):
        return self._enc

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode in one contiguous chunk per thread: tiktoken releases the GIL while it encodes, and a
        chunk per thread avoids the per-document task overhead of `encode_ordinary_batch`."""
        texts = list(texts)
        workers = _encode_workers()
        if workers is None or len(texts) < 64:
            return [self._enc.encode_ordinary(t) for t in texts]
        size = -(-len(texts) // workers._max_workers)
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        encode = self._enc.encode_ordinary
        parts = workers.map(lambda chunk: [encode(t) for t in chunk], chunks)
        return [ids for part in parts for ids in part]

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    @property
    def _pieces(self) -> list[bytes]:
        if self._piece_cache is None:
            self._piece_cache = _token_pieces(self._enc)
        return self._piece_cache

    def token_bytes(self) -> np.ndarray:
        return np.array([len(p) for p in self._pieces] + [0], np.int32)  # BOS carries no bytes

    def identity(self) -> dict:
        if self._identity is None:
            pieces = self._pieces
            extra = {"pattern": self._enc._pat_str, "special": {ENDOFTEXT: GPT2_BOS}}
            self._identity = {"kind": "gpt2", "vocab_size": self.vocab_size, "bos_id": self.bos_id,
                              "hash": _hash_token_table(pieces, extra)}
        return self._identity

    def save(self, folder: Path) -> list[str]:
        return []  # GPT-2 is identified by its hash; the ranks are public and not copied


class ByteBpeTokenizer:
    """A small byte-level BPE trained on a track's training documents, saved with the prepared data.

    Small tracks need a small vocabulary (a 2K vocabulary makes a 1M-parameter model train several times
    faster than GPT-2's 50K, and a byte vocabulary learns too slowly), so the tokenizer is part of the
    track and its hash part of the data hash. BOS is the special token <|endoftext|> (id 0).
    """

    FILE = "tokenizer.json"

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.bos_id = tokenizer.token_to_id(ENDOFTEXT)

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int) -> "ByteBpeTokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[ENDOFTEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        # Long texts go in as whitespace-cut pieces: the same words are counted, so the same vocabulary is
        # learnt, without the library holding a huge document's words at once (harness.data.long_documents).
        tok.train_from_iterator(training_pieces(texts), trainer=trainer, length=len(texts))
        return cls(tok)

    @classmethod
    def load(cls, folder: Path) -> "ByteBpeTokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(folder) / cls.FILE
        if not path.is_file():
            raise DataError(f"{path}: tokenizer file missing from the prepared data (re-run slowrun prepare)")
        return cls(HFTokenizer.from_file(str(path)))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))

    def _pieces(self) -> list[bytes]:
        from tokenizers.pre_tokenizers import ByteLevel

        to_byte = {ch: b for b, ch in enumerate(_byte_level_chars(ByteLevel))}
        pieces = []
        for i in range(self.vocab_size):
            token = self._tok.id_to_token(i)
            pieces.append(b"" if i == self.bos_id else bytes(to_byte[c] for c in token))
        return pieces

    def token_bytes(self) -> np.ndarray:
        return np.array([len(p) for p in self._pieces()], np.int32)

    def identity(self) -> dict:
        extra = {"kind": "byte-bpe", "bos_id": self.bos_id}
        return {"kind": "byte-bpe", "vocab_size": self.vocab_size, "bos_id": self.bos_id,
                "hash": _hash_token_table(self._pieces(), extra) + ":" + hashlib.sha256(
                    self._tok.to_str().encode()).hexdigest()[:16]}

    def save(self, folder: Path) -> list[str]:
        (Path(folder) / self.FILE).write_text(self._tok.to_str(), encoding="utf-8")
        return [self.FILE]


def _byte_level_chars(byte_level) -> list[str]:
    """The 256 printable stand-ins the byte-level pre-tokenizer uses, indexed by byte value."""
    # GPT-2's mapping: printable latin-1 bytes map to themselves, the rest to 256 + n in byte order.
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = {}
    extra = 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    assert set(chars.values()) == set(byte_level.alphabet())
    return [chars[b] for b in range(256)]


class IdentityTokenizer:
    """For sources that already emit token ids (the synthetic language)."""

    def __init__(self, vocab_size: int, bos_id: int, description: dict):
        self.vocab_size = vocab_size
        self.bos_id = bos_id
        self._description = description

    def encode_batch(self, docs):  # documents are already id sequences
        return [np.asarray(d, dtype=np.int64) for d in docs]

    def token_bytes(self) -> None:
        return None

    def identity(self) -> dict:
        digest = hashlib.sha256(json.dumps(self._description, sort_keys=True).encode()).hexdigest()
        return {"kind": "identity", "vocab_size": self.vocab_size, "bos_id": self.bos_id, "hash": digest}

    def save(self, folder: Path) -> list[str]:
        return []
