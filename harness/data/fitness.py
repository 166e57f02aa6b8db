"""A run's fitness carve: held-out training documents for weighting ensembles, taken for one run only.

The method declares how many tokens it wants (`[fitness]` in method.toml, default none); the harness takes
whole documents from the front of the prepared training split until they hold at least that many tokens.
The carve is the method's choice because it is paid for in training data: the carved documents are never
served by its training streams, and its epochs are counted against what is left. The prepared data is the
same for every method; a method that asks for nothing trains on the whole split.

The carve is capped, because the fitness windows are data the method holds without the meter: it may
read them as often as it likes and train on them for as many passes as it likes (a method that declared
49% of the split as fitness and trained on it went from 3.50 to 2.47 nats with its epochs unchanged).
The cap is Slowrun's own use of it scaled to the split: PR #90's q0 carved 132,000 of fineweb's 100M
training tokens (0.132%), with a floor of 32 windows so that a small track still gives the prior enough
windows to fit (4,096 tokens at a sequence length of 128). Reading the windows starts the training clock
(`harness.server.ledger`), so what is done with them counts against a compute class's cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.store import TokenStore
from harness.errors import DataError

PR90_SHARE = 132_000 / 100_000_000  # q0's fitness carve in Slowrun's PR #90, as a share of fineweb's split
FLOOR_WINDOWS = 32  # on a small track: windows the prior needs to be fit at all


def carve_cap(n_tokens: int, seq_len: int) -> int:
    """The most fitness tokens a method may declare on a split of `n_tokens` with windows of `seq_len`."""
    return max(int(round(PR90_SHARE * n_tokens)), FLOOR_WINDOWS * int(seq_len))


@dataclass(frozen=True)
class FitnessCarve:
    declared: int  # tokens the method asked for
    documents: int  # whole documents taken from the front of the training split
    tokens: int  # tokens in those documents (at least `declared`)
    trainable_tokens: int  # what is left for training: the denominator of its epochs

    def to_dict(self) -> dict:
        return {"declared": self.declared, "documents": self.documents, "tokens": self.tokens,
                "trainable_tokens": self.trainable_tokens}


def plan_carve(doc_starts: np.ndarray, n_tokens: int, declared: int, seq_len: int | None = None) -> FitnessCarve:
    """The carve of `declared` tokens from a split with these document starts (a pure function); with
    `seq_len`, refused past `carve_cap`."""
    if declared < 0:
        raise DataError(f"fitness tokens must be >= 0, got {declared}")
    if seq_len is not None and declared > carve_cap(n_tokens, seq_len):
        raise DataError(f"a fitness carve of {declared:,} tokens is over the cap of {carve_cap(n_tokens, seq_len):,} "
                        f"for this track ({n_tokens:,} training tokens, windows of {seq_len}): the larger of "
                        f"{PR90_SHARE:.3%} of the split (Slowrun's q0 carve) and {FLOOR_WINDOWS} windows; fitness "
                        "windows are read without the meter, so they are kept small. Lower [fitness] tokens in "
                        "method.toml")
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


def carve_fitness(data_dir: Path, declared: int, seq_len: int) -> FitnessCarve:
    """The carve of `declared` tokens from the prepared training split in `data_dir`, within the cap."""
    train = TokenStore.open(data_dir, "train")
    return plan_carve(train.doc_starts, train.n_tokens, declared, seq_len)
