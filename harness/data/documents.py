"""The one interface every data source speaks: an ordered stream of documents.

A document is either text (real corpora, tokenized later) or a sequence of token ids (the synthetic
language, which has its own vocabulary). Each carries its origin ("file:line") so that any error found
while tokenizing or splitting can name the exact place to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence, Union

DocumentContent = Union[str, Sequence[int]]


@dataclass(frozen=True)
class Document:
    content: DocumentContent
    origin: str


class DocumentSource(Protocol):
    """An ordered, restartable stream of documents.

    Iterating twice must give the same documents in the same order: preparation relies on it to be
    reproducible byte for byte.
    """

    def __iter__(self) -> Iterator[Document]: ...

    def describe(self) -> dict:
        """A JSON-able description written into the manifest (what was read, not where it was cached)."""
        ...
