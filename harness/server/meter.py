"""Measured epoch accounting: what a training stream is, and the errors that refuse a batch.

Epochs are measured, not claimed: epochs = training target tokens served by all streams / tokens in the
training split (after the fitness carve). Who may be served what is decided by the job's ledger
(`harness.server.ledger`); this module only knows how a stream's windows are cut, so that a stream's
position is a pure function of how many windows it has served (which is what makes a run resumable from
the ledger's counts alone).

Each stream is an endless concatenation of epochs, each epoch the training documents in a fresh seeded
order; windows of seq_len + 1 tokens are cut with a stride of seq_len (consecutive windows share one
boundary token), so one pass over an epoch serves exactly as many targets as the split has tokens and
"1 epoch" means every token was a target once.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

import numpy as np

from harness.data.store import TokenStore
from harness.errors import SlowrunError


def stream_seed(run_seed: int, stream_id: str) -> int:
    """A stable per-stream seed: independent orders for different streams, identical across runs."""
    digest = hashlib.sha256(f"{run_seed}:{stream_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def meter_key(stream_id: str, index: int, count: int) -> str:
    """The name a stream's shard is counted under in the record: `main`, or `main[1/4]` for shard 1 of 4."""
    return stream_id if count == 1 else f"{stream_id}[{index}/{count}]"


@dataclass
class MeterState:
    """Served counts per stream (shard) key, as the record and the checkpoints carry them (JSON-able)."""

    windows: dict[str, int] = field(default_factory=dict)  # windows served per stream
    targets: dict[str, int] = field(default_factory=dict)  # target tokens served per stream
    fitness_tokens: int = 0

    def to_dict(self) -> dict:
        return {"windows": dict(self.windows), "targets": dict(self.targets), "fitness_tokens": self.fitness_tokens}

    @classmethod
    def from_dict(cls, raw: dict) -> "MeterState":
        return cls(dict(raw.get("windows", {})), dict(raw.get("targets", {})), int(raw.get("fitness_tokens", 0)))


class StreamReader:
    """Cuts the windows of one stream's endless order; knows nothing about budgets or ranks.

    Window `w` of a stream holds tokens [w * T, w * T + T + 1) of the concatenated epochs, T = seq_len.
    Which windows a batch gets is the ledger's decision (it owns every stream's position)."""

    def __init__(self, store: TokenStore, seq_len: int, run_seed: int, stream_id: str):
        if store.n_tokens <= seq_len:
            raise SlowrunError(f"the training split ({store.n_tokens} tokens) is shorter than one window")
        self._store = store
        self.seq_len = int(seq_len)
        self.stream_id = stream_id
        self._seed = stream_seed(run_seed, stream_id)  # every shard reads the one order of its stream
        self._epoch_cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # the shards of a stream are served from their ranks' threads

    def _epoch(self, epoch: int) -> np.ndarray:
        with self._lock:
            tokens = self._epoch_cache.get(epoch)
            if tokens is None:
                if len(self._epoch_cache) >= 2:
                    self._epoch_cache.pop(min(self._epoch_cache))
                tokens = self._epoch_cache[epoch] = self._store.epoch_tokens(self._seed, epoch)
            return tokens

    def _window(self, index: int, out: np.ndarray) -> None:
        n = self._store.n_tokens
        start = index * self.seq_len
        filled = 0
        width = out.shape[0]
        while filled < width:
            epoch, offset = divmod(start + filled, n)
            chunk = self._epoch(epoch)[offset : offset + width - filled]
            out[filled : filled + chunk.shape[0]] = chunk
            filled += chunk.shape[0]

    def batch(self, first_window: int, n_windows: int) -> np.ndarray:
        """Windows [first_window, first_window + n_windows) as one (n, seq_len + 1) array in the split's
        own dtype (uint16 for GPT-2: a quarter of int64's bytes on the wire)."""
        seq_len = self.seq_len
        width = seq_len + 1
        n = self._store.n_tokens
        epoch, offset = divmod(first_window * seq_len, n)
        stop = offset + (n_windows - 1) * seq_len + width
        if stop <= n:  # the usual case: the whole batch lies in one epoch, one strided copy
            tokens = self._epoch(epoch)[offset:stop]
            step = tokens.strides[0]
            return np.lib.stride_tricks.as_strided(tokens, (n_windows, width), (seq_len * step, step)).copy()
        batch = np.empty((n_windows, width), dtype=self._store.tokens.dtype)
        for row in range(n_windows):
            self._window(first_window + row, batch[row])
        return batch
