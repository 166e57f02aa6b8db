"""Measured epoch accounting: the only door to training tokens.

Every window a training stream yields is counted here before the method sees it; a request that would
take the total past the budget raises `BudgetExhausted` instead. Epochs are measured, not claimed:
epochs = training target tokens served by all streams / tokens in the training split (after the fitness
carve). Teacher forwards and fitness reads are compute, not data passes: fitness reads are counted
separately and never count as epochs.

Each stream is an endless concatenation of epochs, each epoch the training documents in a fresh seeded
order; windows of seq_len + 1 tokens are cut with a stride of seq_len (consecutive windows share one
boundary token), so one pass over an epoch serves exactly as many targets as the split has tokens and
"1 epoch" means every token was a target once. A stream's position is a pure function of how many
windows it has served, which is what makes a run resumable from the meter's counts alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from harness.data.store import TokenStore
from harness.errors import SlowrunError


class BudgetExhausted(SlowrunError):
    """The method asked for training data past its epoch budget."""


class TimeExhausted(BudgetExhausted):
    """The method asked for training data after its compute class's training-time cap.

    A kind of BudgetExhausted: a method that stops on its epoch budget (and then saves its final snapshot)
    stops on the clock the same way."""


def stream_seed(run_seed: int, stream_id: str) -> int:
    """A stable per-stream seed: independent orders for different streams, identical across runs."""
    digest = hashlib.sha256(f"{run_seed}:{stream_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass
class MeterState:
    """Everything needed to restore the accounting after a crash (JSON-able)."""

    windows: dict[str, int] = field(default_factory=dict)  # windows served per stream
    targets: dict[str, int] = field(default_factory=dict)  # target tokens served per stream
    fitness_tokens: int = 0

    def to_dict(self) -> dict:
        return {"windows": dict(self.windows), "targets": dict(self.targets), "fitness_tokens": self.fitness_tokens}

    @classmethod
    def from_dict(cls, raw: dict) -> "MeterState":
        return cls(dict(raw.get("windows", {})), dict(raw.get("targets", {})), int(raw.get("fitness_tokens", 0)))


class Meter:
    """Counts target tokens against the budget; knows nothing about models or methods."""

    def __init__(self, epoch_tokens: int, seq_len: int, budget_epochs: float, state: MeterState | None = None,
                 on_serve=None, shared=None):
        """`shared`, in a distributed run, is the job-wide counter (`add(tokens) -> new total`) that holds
        the budget over all ranks; this meter then keeps only this rank's per-stream counts."""
        if epoch_tokens <= seq_len:
            raise SlowrunError(f"the training split ({epoch_tokens} tokens) is shorter than one window")
        self.epoch_tokens = int(epoch_tokens)
        self.seq_len = int(seq_len)
        self.budget_epochs = float(budget_epochs)
        # integer arithmetic for the budget check; the epsilon absorbs float error in budget * tokens
        self.allowed_targets = int(np.floor(self.budget_epochs * self.epoch_tokens + 1e-6))
        self.state = state or MeterState()
        self._on_serve = on_serve
        self._shared = shared

    @property
    def local_targets(self) -> int:
        """Target tokens served by this process's streams."""
        return sum(self.state.targets.values())

    @property
    def total_targets(self) -> int:
        """Target tokens served by every stream of the run (all ranks in a distributed run)."""
        return self._shared.total() if self._shared is not None else self.local_targets

    @property
    def epochs(self) -> float:
        return self.total_targets / self.epoch_tokens

    @property
    def remaining_targets(self) -> int:
        return self.allowed_targets - self.total_targets

    def charge(self, stream_id: str, n_windows: int, group_step: tuple[str, int, int] | None = None) -> None:
        """Count `n_windows` windows for `stream_id`, or refuse if that would pass the budget.

        `group_step=(stream, step, shards)` marks one shard of a sharded stream in a distributed run: the
        windows of all `shards` shards at that step are granted or refused together, so ranks that step
        together (DDP) all train the step or all stop (see `StoreBudget.charge_group_step`).
        """
        targets = n_windows * self.seq_len
        if self._shared is not None and group_step is not None and group_step[2] > 1:
            stream, step, shards = group_step
            if not self._shared.charge_group_step(stream, step, targets * shards, self.allowed_targets):
                self._refuse(stream_id, n_windows * shards, targets * shards,
                             remaining=self.allowed_targets - self._shared.total())
        elif self._shared is not None:
            after = self._shared.add(targets)
            if after > self.allowed_targets:
                self._shared.add(-targets)
                self._refuse(stream_id, n_windows, targets, remaining=self.allowed_targets - (after - targets))
        elif targets > self.remaining_targets:
            self._refuse(stream_id, n_windows, targets, remaining=self.remaining_targets)
        self.state.windows[stream_id] = self.state.windows.get(stream_id, 0) + n_windows
        self.state.targets[stream_id] = self.state.targets.get(stream_id, 0) + targets
        if self._on_serve is not None:
            self._on_serve(targets)

    def _refuse(self, stream_id: str, n_windows: int, targets: int, remaining: int) -> None:
        served = (self.allowed_targets - remaining) / self.epoch_tokens
        raise BudgetExhausted(
            f"stream {stream_id!r} asked for {n_windows} more window(s) ({targets:,} target tokens) but only "
            f"{max(remaining, 0):,} remain of the budget of {self.budget_epochs:g} epochs "
            f"({self.allowed_targets:,} tokens); {served:.4f} epochs were served"
        )

    def charge_fitness(self, tokens: int) -> None:
        self.state.fitness_tokens += int(tokens)


class TrainStream:
    """An iterator of (inputs, targets) batches for one stream id; every batch is charged first.

    Created through the run context only. Positions continue across re-creations of the same stream id,
    so a method may ask for its stream again (e.g. after resuming) without replaying data.
    """

    def __init__(self, store: TokenStore, meter: Meter, stream_id: str, run_seed: int, batch_size: int,
                 shard: tuple[int, int] | None = None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise SlowrunError(f"batch_size must be a positive integer, got {batch_size!r}")
        index, count = shard or (0, 1)
        if not (isinstance(count, int) and isinstance(index, int) and 0 <= index < count):
            raise SlowrunError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
        self._store = store
        self._meter = meter
        self.stream_id = stream_id
        self.batch_size = batch_size
        self.shard = (index, count)
        # A shard is metered under its own key: its count alone fixes its position in the shared order.
        self.meter_key = stream_id if count == 1 else f"{stream_id}[{index}/{count}]"
        self._seed = stream_seed(run_seed, stream_id)  # every shard reads the one order of its stream
        self._epoch_cache: dict[int, np.ndarray] = {}

    @property
    def windows_served(self) -> int:
        """Windows this stream (this shard of it) has served."""
        return self._meter.state.windows.get(self.meter_key, 0)

    def _first_window(self) -> int:
        """Index in the stream's endless order of the next batch's first window.

        Shards deal whole batches round-robin: batch k of shard i is batch k * count + i of the stream, so
        shards that step together (DDP) read disjoint windows and together follow the unsharded order.
        """
        index, count = self.shard
        batches = self.windows_served // self.batch_size
        return (batches * count + index) * self.batch_size

    def _epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._epoch_cache:
            if len(self._epoch_cache) >= 2:
                self._epoch_cache.pop(min(self._epoch_cache))
            self._epoch_cache[epoch] = self._store.epoch_tokens(self._seed, epoch)
        return self._epoch_cache[epoch]

    def _window(self, index: int, out: np.ndarray) -> None:
        """Window `index` of the endless stream: tokens [index * T, index * T + T + 1) across epochs."""
        n = self._store.n_tokens
        start = index * self._meter.seq_len
        filled = 0
        width = out.shape[0]
        while filled < width:
            epoch, offset = divmod(start + filled, n)
            chunk = self._epoch(epoch)[offset : offset + width - filled]
            out[filled : filled + chunk.shape[0]] = chunk
            filled += chunk.shape[0]

    def next_array(self) -> np.ndarray:
        """The next batch as one (batch, seq_len + 1) array in the split's own dtype, charged first.

        This is what the data server sends over the wire (uint16 for GPT-2: a quarter of int64's bytes).
        """
        first = self._first_window()
        index, count = self.shard
        self._meter.charge(self.meter_key, self.batch_size,
                           group_step=(self.stream_id, self.windows_served // self.batch_size, count))
        seq_len = self._meter.seq_len
        width = seq_len + 1
        n = self._store.n_tokens
        start = first * seq_len
        epoch, offset = divmod(start, n)
        stop = offset + (self.batch_size - 1) * seq_len + width
        if stop <= n:  # the usual case: the whole batch lies in one epoch, one strided copy
            tokens = self._epoch(epoch)[offset:stop]
            step = tokens.strides[0]
            return np.lib.stride_tricks.as_strided(tokens, (self.batch_size, width), (seq_len * step, step)).copy()
        batch = np.empty((self.batch_size, width), dtype=self._store.tokens.dtype)
        for row in range(self.batch_size):
            self._window(first + row, batch[row])
        return batch

    def next_batch(self):
        import torch

        tensor = torch.from_numpy(self.next_array().astype(np.int64))
        return tensor[:, :-1], tensor[:, 1:]

    def __iter__(self):
        return self

    def __next__(self):
        return self.next_batch()

    @property
    def epoch(self) -> float:
        """How far this stream (all its shards, stepping together) has read, in passes over the split."""
        return self.windows_served * self.shard[1] * self._meter.seq_len / self._store.n_tokens
