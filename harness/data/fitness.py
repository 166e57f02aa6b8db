"""A run's fitness carve: held-out training documents for weighting ensembles, taken for one run only.

The method declares how many tokens it wants (`[fitness]` in method.toml, default none); the harness takes
whole documents from the front of the prepared training split until they hold at least that many tokens.
The carve is the method's choice because it is paid for in training data: the carved documents are never
served by its training streams, and its epochs are counted against what is left. The prepared data is the
same for every method; a method that asks for nothing trains on the whole split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.store import TokenStore
from harness.errors import DataError


@dataclass(frozen=True)
class FitnessCarve:
    declared: int  # tokens the method asked for
    documents: int  # whole documents taken from the front of the training split
    tokens: int  # tokens in those documents (at least `declared`)
    trainable_tokens: int  # what is left for training: the denominator of its epochs

    def to_dict(self) -> dict:
        return {"declared": self.declared, "documents": self.documents, "tokens": self.tokens,
                "trainable_tokens": self.trainable_tokens}


def plan_carve(doc_starts: np.ndarray, n_tokens: int, declared: int) -> FitnessCarve:
    """The carve of `declared` tokens from a split with these document starts (a pure function)."""
    if declared < 0:
        raise DataError(f"fitness tokens must be >= 0, got {declared}")
    if declared == 0:
        return FitnessCarve(0, 0, 0, int(n_tokens))
    starts = np.asarray(doc_starts, dtype=np.int64)
    documents = int(np.searchsorted(starts, declared, side="left"))  # documents starting before `declared`
    tokens = int(starts[documents]) if documents < len(starts) else int(n_tokens)
    if tokens * 2 >= n_tokens:
        raise DataError(f"a fitness carve of {declared:,} tokens takes {tokens:,} of the {n_tokens:,} training "
                        "tokens (whole documents); it must leave more than half for training: lower [fitness] "
                        "tokens in method.toml")
    return FitnessCarve(int(declared), documents, tokens, int(n_tokens) - tokens)


def carve_fitness(data_dir: Path, declared: int) -> FitnessCarve:
    """The carve of `declared` tokens from the prepared training split in `data_dir`."""
    train = TokenStore.open(data_dir, "train")
    return plan_carve(train.doc_starts, train.n_tokens, declared)
