"""What a method may call: the RunContext, and the errors that end a run.

A method is a function `main(ctx)` in a method directory. It never opens data files: training data comes
only from `ctx.train_stream`, whose every window is metered, and held-out documents for weighting
ensembles from `ctx.fitness_windows`. What it produced reaches evaluation only as snapshots. The
validation split is not in the method's process at all.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from harness.data.store import TokenStore
from harness.distributed import RankGroup, RankInfo, make_rank_groups
from harness.errors import SlowrunError
from harness.meter import BudgetExhausted, Meter, MeterState, TrainStream
from harness.snapshots import build_spec_of, list_snapshots, write_snapshot
from harness.tracks import Track

__all__ = ["RunContext", "BudgetExhausted", "Diverged", "ContractError"]

LOSS_KEYS = ("loss", "train_loss")


class Diverged(SlowrunError):
    """The training loss became NaN or infinite."""


class ContractError(SlowrunError):
    """The method used the context in a way the contract does not allow."""


@dataclass(frozen=True)
class RunPaths:
    """The files a run owns; the method sees only `scratch`.

    In a distributed run each rank keeps its own metrics file and checkpoint (rank 0 the usual names),
    so a resume can roll every rank back to its own last checkpoint.
    """

    root: Path
    rank: int = 0

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def metrics(self) -> Path:
        return self.root / ("metrics.jsonl" if self.rank == 0 else f"metrics-rank{self.rank}.jsonl")

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint" / ("state.pt" if self.rank == 0 else f"state-rank{self.rank}.pt")

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def train_data(self) -> Path:
        return self.root / "train_data"


class _Progress:
    """A tqdm bar over the budget's target tokens, moved by the meter, annotated by the method's logs."""

    def __init__(self, total: int, initial: int, epoch_tokens: int, label: str, enabled: bool):
        from tqdm import tqdm

        self.epoch_tokens = epoch_tokens
        self.bar = tqdm(total=total, initial=initial, unit="tok", unit_scale=True, desc=label,
                        disable=not enabled, dynamic_ncols=True, smoothing=0.05)
        self.served = initial

    def advance(self, tokens: int) -> None:
        self.served += tokens
        self.bar.update(tokens)

    def note(self, metrics: Mapping[str, Any]) -> None:
        shown = {"epoch": f"{self.served / self.epoch_tokens:.2f}"}
        for key, value in metrics.items():
            if isinstance(value, float):
                shown[key] = f"{value:.4g}"
        self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        self.bar.close()


class RunContext:
    """The method's whole view of the run. Attributes are read-only by convention and by construction."""

    def __init__(self, *, track: Track, budget: float, hparams: Mapping[str, Any], seed: int, device: str,
                 paths: RunPaths, train_store: TokenStore, fitness_docs: int, meter_state: MeterState | None = None,
                 resume: dict | None = None, progress: bool = True, rank_info: RankInfo | None = None,
                 shared_budget=None):
        self.track = track
        self.budget = float(budget)
        self.hparams = MappingProxyType(dict(hparams))
        self.seed = int(seed)
        self.device = device
        info = rank_info or RankInfo()
        self.rank, self.world_size, self.local_rank = info.rank, info.world_size, info.local_rank
        self._rank_info = info
        self._rank_groups: dict[int, RankGroup] = {}
        self.seq_len = track.seq_len
        self.vocab_size = train_store.vocab_size
        self.bos_id = train_store.bos_id
        self._paths = paths
        self.scratch_dir = paths.scratch
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        self._fitness = train_store.documents(0, fitness_docs) if fitness_docs else None
        self._train = train_store.documents(fitness_docs)
        self.epoch_tokens = self._train.n_tokens
        meter_state = meter_state or MeterState()
        self._meter = Meter(self.epoch_tokens, track.seq_len, budget, meter_state, on_serve=self._served,
                            shared=shared_budget)
        self._progress = _Progress(self._meter.allowed_targets, self._meter.total_targets, self.epoch_tokens,
                                   f"train {track.name}", progress and self.rank == 0)
        self._streams: dict[tuple, TrainStream] = {}
        self._ensemble: dict[str, float] | str | None = None
        self._resume = resume
        self._started = time.monotonic()
        self._last_metrics: dict[str, Any] = {}

    # ---- accounting -------------------------------------------------------------------------------
    @property
    def epochs(self) -> float:
        """Epochs metered so far (all streams)."""
        return self._meter.epochs

    @property
    def remaining_epochs(self) -> float:
        return self._meter.remaining_targets / self.epoch_tokens

    def windows_per_epoch(self) -> float:
        """Windows of seq_len targets in one epoch (fractional: epochs need not be whole windows)."""
        return self.epoch_tokens / self.seq_len

    def _served(self, tokens: int) -> None:
        if self.world_size > 1:  # rank 0's bar follows the whole job, not only its own streams
            if self.rank == 0:
                self._progress.advance(self._meter.total_targets - self._progress.served)
        else:
            self._progress.advance(tokens)

    # ---- ranks ----------------------------------------------------------------------------------
    def rank_groups(self, n_groups: int) -> RankGroup:
        """This rank's group when the world is split into `n_groups` contiguous groups of ranks.

        The group carries its own process group (for DDP inside it) and a leader, which is the rank that
        writes the group's snapshots. Every rank must ask for the same `n_groups` at the same point (it
        creates process groups); in a one-process run it is group 0 of one rank.
        """
        if n_groups not in self._rank_groups:
            self._rank_groups[n_groups] = make_rank_groups(self._rank_info, n_groups)
        return self._rank_groups[n_groups]

    # ---- data -----------------------------------------------------------------------------------
    def train_stream(self, stream_id: str = "main", batch_size: int = 8,
                     shard: tuple[int, int] | None = None) -> TrainStream:
        """An endless, metered iterator of (inputs, targets) LongTensor batches of shape [batch, seq_len].

        Each stream id has its own document order (derived from the run seed and the id) and its own
        position, which continues if the stream is asked for again. Every batch is charged to the budget
        before it is returned; a batch that would pass the budget raises BudgetExhausted (in a
        distributed run the budget is the job's, summed over all ranks).

        `shard=(i, n)` reads part i of n of the stream: the ranks of a DDP group each take their own
        shard and step together, so together they read the stream's one order without overlap.
        """
        if not isinstance(stream_id, str) or not stream_id:
            raise ContractError("stream_id must be a non-empty string")
        key = (stream_id, tuple(shard) if shard else None)
        stream = self._streams.get(key)
        if stream is None or stream.batch_size != batch_size:
            stream = TrainStream(self._train, self._meter, stream_id, self.seed, batch_size, shard)
            self._streams[key] = stream
        return stream

    def fitness_windows(self):
        """The held-out training documents as a LongTensor [n, seq_len + 1] of disjoint windows.

        Identical for every stream and never served by them; reads are counted, but not as epochs.
        """
        import torch

        if self._fitness is None or self._fitness.num_windows(self.seq_len) == 0:
            raise ContractError(f"track {self.track.name!r} carves no fitness documents (fitness_tokens = 0)")
        windows = np.asarray(self._fitness.windows(self.seq_len), dtype=np.int64)
        self._meter.charge_fitness(windows.shape[0] * self.seq_len)
        return torch.from_numpy(windows)

    # ---- results --------------------------------------------------------------------------------
    def save_snapshot(self, model, tag: str, meta: Mapping[str, Any] | None = None, spec: dict | None = None,
                      group: RankGroup | None = None) -> dict | None:
        """Store the model's weights and build spec, stamped with the epochs metered so far.

        With `group` (DDP inside a rank group) only the group's leader writes; the other ranks get None.
        In a distributed run the stamp is the job's total when the snapshot is taken.
        """
        if group is not None and not group.is_leader:
            return None
        if self.world_size > 1:
            meta = {**(meta or {}), "rank": self.rank}
        targets = self._meter.total_targets
        snap = write_snapshot(self._paths.snapshots, tag, model, build_spec_of(model, spec),
                              targets / self.epoch_tokens, targets, dict(meta or {}))
        self.log(event="snapshot", tag=tag)
        return snap.to_summary()

    def snapshot_tags(self) -> list[str]:
        return [s.tag for s in list_snapshots(self._paths.snapshots)]

    def set_ensemble(self, weights: Mapping[str, float] | str) -> None:
        """The final predictor: {tag: weight} over saved snapshots, or "prior" for the harness's learned
        prior over all snapshots (fit on the fitness windows at evaluation). Default: the last snapshot."""
        if weights == "prior":
            self._ensemble = "prior"
            return
        if not isinstance(weights, Mapping) or not weights:
            raise ContractError('set_ensemble takes {tag: weight} or "prior"')
        known = set(self.snapshot_tags())
        unknown = [t for t in weights if t not in known]
        if unknown:
            raise ContractError(f"set_ensemble names unknown snapshot(s) {unknown}; saved: {sorted(known)}")
        values = [float(w) for w in weights.values()]
        if any(not math.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
            raise ContractError("ensemble weights must be finite, non-negative, and not all zero")
        total = sum(values)
        self._ensemble = {tag: float(w) / total for tag, w in weights.items()}

    @property
    def ensemble(self):
        return self._ensemble

    # ---- logging --------------------------------------------------------------------------------
    def log(self, metrics: Mapping[str, Any] | None = None, **more: Any) -> None:
        """Append metrics to the run's metrics.jsonl, stamped with the meter's tokens and epochs.

        A non-finite `loss` or `train_loss` ends the run with status "diverged".
        """
        entry = {**(metrics or {}), **more}
        for key in LOSS_KEYS:
            value = entry.get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise Diverged(f"training {key} is {value} after {self.epochs:.4f} epochs; lower the learning rate "
                               "or add warm-up / gradient clipping")
        line = {"tokens": self._meter.total_targets, "epochs": round(self.epochs, 6), **entry}
        with open(self._paths.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=_jsonable) + "\n")
        self._progress.note(entry)

    # ---- checkpoint / resume --------------------------------------------------------------------
    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Save the method's state with the meter and RNG states, atomically; resume continues from here."""
        import torch

        path = self._paths.checkpoint
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "method_state": dict(state),
            "meter": self._meter.state.to_dict(),
            "snapshots": self.snapshot_tags(),
            "ensemble": self._ensemble,
            "metrics_lines": _count_lines(self._paths.metrics),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(payload, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def resume_state(self) -> Mapping[str, Any] | None:
        """The state given to the last checkpoint() of an interrupted run, or None for a fresh run.

        Calling it also restores the random number generators as they were at that checkpoint, so call it
        after building the model (whose initialisation draws random numbers the checkpoint overwrites).
        """
        if self._resume is None:
            return None
        import torch

        rng = self._resume["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        return self._resume["method_state"]

    def close(self) -> None:
        self._progress.close()

    def meter_state(self) -> MeterState:
        return self._meter.state

    @property
    def train_seconds(self) -> float:
        return time.monotonic() - self._started


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _jsonable(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
