"""Long documents in bounded pieces, with exactly the tokens of the whole document.

A single document can be larger than everything else a track reads (one 50 MB line took 142 s and about
10 GB to prepare: the tokenizers library keeps per-token offsets and strings for the whole document, and
preparation encoded it several times). Preparation never needs more of a document than the tokens its
splits can take, so long documents are encoded piece by piece and only until enough tokens are in hand.

Why the pieces give exactly the whole document's tokens: both byte-level BPEs a track can use (GPT-2's
through tiktoken, the small tracks' through tokenizers' ByteLevel) first split text with GPT-2's
pre-tokenization regex and merge only inside each of its matches. No alternative of that regex puts
whitespace after a non-space character (a space may only lead a word), so just before a space or newline
that follows a non-space character every match ends; and the regex has no look-behind, so the matches
after that point are the same whether or not the text before it is there. Cutting there changes nothing
(tests/data/test_long_documents.py checks it on WebText, and it was checked for every Unicode code point
before the space). Training a BPE on such pieces counts the same words as on the whole document.

A document with no such point anywhere (no spaces or newlines after text) cannot be cut this way and is
encoded whole, as before.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator, Sequence

import numpy as np

PIECE_CHARS = 1 << 16  # 64K characters: some 25K tokens, a few MB inside the tokenizers library
_CUT = re.compile(r"(?<=\S)[ \n]")  # Python's \S (not str.isspace) is narrower than the regexes' non-space


def is_long(content) -> bool:
    """Text long enough to be encoded in pieces; token-id documents (the synthetic source) never are."""
    return isinstance(content, str) and len(content) > PIECE_CHARS


def _piece_end(text: str, start: int, size: int) -> int:
    """Where the piece that starts at `start` ends: the last safe cut within `size` characters, else the
    first one after them, else the end of the text."""
    end = start + size
    if end >= len(text):
        return len(text)
    at = end
    while True:
        at = max(text.rfind(" ", start + 1, at), text.rfind("\n", start + 1, at))
        if at < 0:
            break
        if not text[at - 1].isspace():
            return at
    found = _CUT.search(text, end)
    return found.start() if found else len(text)


def text_pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """Consecutive pieces of `text`, each ending just before a space or newline that follows a non-space
    character (the last ends with the text); joined they are `text`."""
    start = 0
    while start < len(text):
        end = _piece_end(text, start, size)
        yield text[start:end]
        start = end


def encode_prefix(tokenizer, text: str, cap: int, size: int = PIECE_CHARS) -> np.ndarray:
    """The document's tokens, encoded piece by piece until at least `cap` are in hand: all of them when the
    document has fewer, else a prefix of the whole document's tokens at least `cap` long."""
    parts, count = [], 0
    for piece in text_pieces(text, size):
        parts.append(np.asarray(tokenizer.encode_batch([piece])[0], dtype=np.int64))
        count += parts[-1].size
        if count >= cap:
            break
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def encode_documents(tokenizer, contents: Sequence, cap: int) -> list:
    """Token ids of each document: short ones in one batch call, long ones by `encode_prefix`.

    `cap` must be at least the largest split budget: a document cut to `cap` tokens then fills, and is
    truncated in, whichever split it lands in, exactly as the whole document would be.
    """
    short = [c for c in contents if not is_long(c)]
    encoded = iter(tokenizer.encode_batch(short) if short else ())
    return [encode_prefix(tokenizer, c, cap) if is_long(c) else next(encoded) for c in contents]


def training_pieces(texts: Iterable[str]) -> Iterator[str]:
    """Texts for a BPE trainer, long ones in pieces: the same words counted, never a whole huge document."""
    for text in texts:
        if is_long(text):
            yield from text_pieces(text)
        else:
            yield text


def utf8_length(text: str, size: int = PIECE_CHARS) -> int:
    """len(text.encode("utf-8")), without a copy of a long text."""
    if len(text) <= size:
        return len(text.encode("utf-8"))
    return sum(len(text[i : i + size].encode("utf-8")) for i in range(0, len(text), size))
