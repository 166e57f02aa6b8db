"""A stand-in for the harness's RunContext, for driving the recipes in-process.

It serves seeded random token windows, meters them the way the harness does (targets served / epoch
tokens) and records what the recipe hands over (snapshots, checkpoints, logs, the ensemble), so tests can
look at placement, devices and arithmetic without a data server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import zlib

import torch

from harness.distributed import RankGroup


@dataclass
class FakeContext:
    vocab_size: int = 64
    seq_len: int = 16
    epoch_tokens: int = 16 * 32
    budget: float = 2.0
    seed: int = 0
    device: str = "cpu"
    rank: int = 0
    world_size: int = 1
    hparams: dict = field(default_factory=dict)
    resume: dict | None = None  # a checkpoint record (see `checkpoint`) to resume from
    snapshots: list = field(default_factory=list)
    checkpoints: list = field(default_factory=list)
    logs: list = field(default_factory=list)
    ensemble: object = None
    streams: dict = field(default_factory=dict)
    served_targets: int = 0
    groups_asked: list = field(default_factory=list)
    time_limit_s: float | None = None  # a compute class's cap
    train_clock: object = None  # () -> training seconds so far (the harness's clock); None: 0
    warmup_served: int = 0  # warm-up batches handed out (never metered)

    def __post_init__(self):
        self.hparams = MappingProxyType(dict(self.hparams))

    @property
    def epochs(self) -> float:
        return self.served_targets / self.epoch_tokens

    def train_stream(self, stream_id="main", batch_size=8, shard=None):
        key = (stream_id, shard)
        # shard (i, n) is part i of each n-fold batch of the stream's one order, as the harness serves it
        index, count = shard if shard else (0, 1)
        generator = torch.Generator().manual_seed(zlib.crc32(repr((stream_id, self.seed)).encode()))
        skip = (self.resume or {}).get("streams", {}).get(key, 0)  # the harness keeps stream positions
        self.streams[key] = skip
        for _ in range(skip):
            torch.randint(0, self.vocab_size, (batch_size * count, self.seq_len + 1), generator=generator)

        def windows():
            while True:
                whole = torch.randint(0, self.vocab_size, (batch_size * count, self.seq_len + 1), generator=generator)
                batch = whole[index * batch_size:(index + 1) * batch_size]
                self.served_targets += batch_size * self.seq_len
                self.streams[key] = self.streams.get(key, 0) + 1
                yield batch[:, :-1], batch[:, 1:]

        return windows()

    @property
    def remaining_seconds(self):
        if self.time_limit_s is None:
            return None
        return max(0.0, self.time_limit_s - (self.train_clock() if self.train_clock else 0.0))

    def warmup_batches(self, n, batch_size=8):
        generator = torch.Generator().manual_seed(self.seed ^ 0x5EED)
        for _ in range(n):
            self.warmup_served += 1
            tokens = torch.randint(0, self.vocab_size, (batch_size, self.seq_len + 1), generator=generator)
            yield tokens[:, :-1], tokens[:, 1:]

    def gather(self, key, value):
        """This rank's value alone: the fake plays one rank and has no peers (real ranks gather in
        tests/runner/test_distributed.py and tests/accounting)."""
        return [value]

    def rank_groups(self, n_groups):
        from q0_reference.placement import group_sizes

        self.groups_asked.append(n_groups)
        start = 0
        for index, size in enumerate(group_sizes(self.world_size, n_groups)):
            ranks = tuple(range(start, start + size))
            if self.rank in ranks:
                return RankGroup(index, ranks, ranks.index(self.rank), None)
            start += size
        raise AssertionError("rank outside the world")

    def save_snapshot(self, model, tag, meta=None, spec=None, group=None, graph=True):
        if group is not None and not group.is_leader:
            return None
        assert graph is True or isinstance(graph, torch.nn.Module)  # what the harness's context accepts
        self.snapshots.append((tag, {k: v.detach().clone() for k, v in model.state_dict().items()}, dict(meta or {})))
        return {"tag": tag}

    def prepare_snapshot(self, model, spec=None):
        self.prepared = getattr(self, "prepared", 0) + 1
        return True

    def snapshot_tags(self):
        return [tag for tag, _, _ in self.snapshots]

    def checkpoint(self, state):
        """Keep what the harness keeps: the state, this rank's RNG, its stream positions, its snapshots."""
        self.checkpoints.append({"state": state, "rng": torch.get_rng_state(), "streams": dict(self.streams),
                                 "snapshots": len(self.snapshots), "served": self.served_targets})

    def resume_state(self):
        if self.resume is None:
            return None
        torch.set_rng_state(self.resume["rng"])
        self.served_targets = self.resume["served"]
        return self.resume["state"]

    def log(self, metrics=None, **more):
        self.logs.append({**(metrics or {}), **more})

    def set_ensemble(self, weights):
        self.ensemble = weights

    def fitness_windows(self):
        generator = torch.Generator().manual_seed(1234)
        return torch.randint(0, self.vocab_size, (8, self.seq_len + 1), generator=generator)


class GradientRecorder:
    """An 'optimizer' that keeps the gradients it is asked to apply and changes nothing."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self):
        self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters()}
