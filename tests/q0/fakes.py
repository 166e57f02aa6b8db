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

from harness.common.distributed import RankGroup


class FakeStream:
    """A metered stream as RunContext.train_stream gives it: ``next(stream)`` is one (inputs, targets)
    batch, ``next_tokens(n)`` n batches at once as [n, batch, seq_len + 1] windows. Shard (i, n) is part i
    of each n-fold batch of the stream's one order, as the harness serves it."""

    def __init__(self, ctx: "FakeContext", stream_id: str, batch_size: int, shard):
        self.ctx, self.batch_size = ctx, batch_size
        self.key = (stream_id, shard)
        self.index, self.count = shard if shard else (0, 1)
        self.generator = torch.Generator().manual_seed(zlib.crc32(repr((stream_id, ctx.seed)).encode()))
        skip = (ctx.resume or {}).get("streams", {}).get(self.key, 0)  # the harness keeps stream positions
        ctx.streams[self.key] = skip
        for _ in range(skip):
            self._whole()

    def _whole(self) -> torch.Tensor:
        return torch.randint(0, self.ctx.vocab_size, (self.batch_size * self.count, self.ctx.seq_len + 1),
                             generator=self.generator)

    def next_tokens(self, n_batches: int = 1) -> torch.Tensor:
        blocks = []
        for _ in range(n_batches):
            blocks.append(self._whole()[self.index * self.batch_size:(self.index + 1) * self.batch_size])
            self.ctx.served_targets += self.batch_size * self.ctx.seq_len
            self.ctx.streams[self.key] = self.ctx.streams.get(self.key, 0) + 1
        return torch.stack(blocks)

    def __iter__(self):
        return self

    def __next__(self):
        tokens = self.next_tokens(1)[0]
        return tokens[:, :-1], tokens[:, 1:]


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
        return FakeStream(self, stream_id, batch_size, shard)

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
