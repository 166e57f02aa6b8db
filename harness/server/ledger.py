"""The job's ledger: one account of the epoch budget and the training clock for every stream of a run.

Every rank of a job talks to the one data server, and every training batch of every rank is decided here,
under one lock. Three rules make the account exact whatever the ranks do:

* **The server owns every position.** A stream's plan (batch size, number of shards) is fixed by its first
  request; a request with another batch size or sharding is refused. The step a shard is at is the number
  of batches the server has served it, never something the method says, so a paid step cannot be asked for
  again (the old server keyed steps by `windows_served // batch_size` and rebuilt a stream when the batch
  size changed, which replayed step 0 for free).
* **A group step is decided once, and the decision is kept until every shard has read it.** Ranks of a DDP
  group step together, so step k of a stream with n shards is granted or refused once for all n (the first
  shard to arrive decides; a grant reserves all n shards' windows); the decision stays until each of the n
  shards has read it, however far apart they run. Forgetting it earlier (the old rule dropped step k - 2
  when step k was decided) made a late shard decide again, paying the step twice and, at the budget or the
  cap, refusing one shard of a step whose peers were granted: they then wait in an all-reduce for ever.
* **Served, not reserved, is what the record counts.** A grant reserves the whole step against the budget
  (so the n shards cannot be refused one by one), and each shard's windows count as served when it reads
  its grant. If a shard never comes for its part (its rank died) the reservation holds the budget but the
  record says what was sent.

Each (stream, shard) belongs to the rank that first reads it: another rank asking for it is refused, so a
shard's position is one rank's. Shards are refused in one-process runs (there is nobody to step with).

A checkpoint request (the scheduler's warning, :meth:`Ledger.request_checkpoint`) is carried by batches, and
the ledger decides which: every shard of a stream first sees it on the same step, the step the farthest
shard stood at when the request came. Ranks of a DDP group are within a step of each other, so any rule
that answered "now" would tell one rank before its peer's step and the other after it; the two would then
checkpoint at different steps (or one would wait for the other in a collective while writing). With the
step fixed by the ledger, every rank of a group sees the request in the same optimizer step and checks it
at the same step boundary, without a collective of the method's own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from harness.errors import SlowrunError
from harness.errors import BudgetExhausted, TimeExhausted
from harness.server.meter import MeterState, meter_key
from harness.server.clock import TrainClock


class StreamRefused(SlowrunError):
    """A training request the contract does not allow (a changed plan, a shard that is not this rank's)."""


@dataclass(frozen=True)
class StreamPlan:
    """How a stream is read, fixed by its first request."""

    stream_id: str
    batch_size: int
    shards: int

    def step_windows(self) -> int:
        return self.batch_size * self.shards


@dataclass(frozen=True)
class Grant:
    """One shard's batch: which windows of its stream, and its position after it."""

    first_window: int
    windows: int
    windows_served: int  # this shard's windows after this batch
    stream_targets: int  # targets served by all shards of the stream so far
    total_targets: int  # targets served by the job so far
    checkpoint_requested: bool = False  # the harness asks for a checkpoint (the same step for every shard)


@dataclass
class _Decision:
    granted: bool
    refusal: type[BudgetExhausted] | None = None  # what every shard of a refused step raises
    message: str = ""
    readers: set[int] = field(default_factory=set)


class Ledger:
    """Budget and clock decisions for every step of every stream of one job."""

    def __init__(self, allowed_targets: int, epoch_tokens: int, seq_len: int, world_size: int, budget_epochs: float,
                 clock: TrainClock):
        self.allowed_targets = int(allowed_targets)
        self.epoch_tokens = int(epoch_tokens)
        self.seq_len = int(seq_len)
        self.world_size = int(world_size)
        self.budget_epochs = float(budget_epochs)
        self.clock = clock
        self._lock = threading.Lock()
        self._plans: dict[str, StreamPlan] = {}
        self._owner: dict[tuple[str, int], int] = {}  # (stream, shard) -> rank
        self._windows: dict[tuple[str, int], int] = {}  # (stream, shard) -> windows served
        self._stream_windows: dict[str, int] = {}  # stream -> windows served over all its shards
        self._pending: dict[str, dict[int, _Decision]] = {}  # stream -> step -> decision not read by all
        self._reserved = 0  # targets granted, whether or not every shard has read its part yet
        self._served = 0  # targets sent
        self._fitness: dict[int, int] = {}  # rank -> fitness tokens read
        self._checkpoint_from: dict[str, int] | None = None  # stream -> the step its batches carry the request from

    # ---- restore ------------------------------------------------------------------------------------
    def restore(self, rank: int, state: dict) -> None:
        """Bring back what `rank` had been served, from its last checkpoint (`rank_state`)."""
        with self._lock:
            for stream_id, raw in state.get("streams", {}).items():
                plan = StreamPlan(stream_id, int(raw["batch_size"]), int(raw["shards"]))
                known = self._plans.setdefault(stream_id, plan)
                if known != plan:
                    raise SlowrunError(f"checkpoints disagree on stream {stream_id!r}: {known} and {plan}")
                for index, windows in raw["windows"].items():
                    key = (stream_id, int(index))
                    self._owner[key] = rank
                    self._windows[key] = int(windows)
                    self._stream_windows[stream_id] = self._stream_windows.get(stream_id, 0) + int(windows)
                    self._served += int(windows) * self.seq_len
            self._fitness[rank] = int(state.get("fitness_tokens", 0))
            self._reserved = self._served

    def rank_state(self, rank: int) -> dict:
        """What `rank` has been served (its streams' plans and positions), for its checkpoint."""
        with self._lock:
            streams: dict[str, dict] = {}
            for (stream_id, index), owner in self._owner.items():
                if owner == rank:
                    plan = self._plans[stream_id]
                    entry = streams.setdefault(stream_id, {"batch_size": plan.batch_size, "shards": plan.shards,
                                                           "windows": {}})
                    entry["windows"][str(index)] = self._windows[(stream_id, index)]
            return {"streams": streams, "fitness_tokens": self._fitness.get(rank, 0)}

    # ---- the one door to training data --------------------------------------------------------------
    def _plan(self, rank: int, stream_id: str, batch_size, shard) -> tuple[StreamPlan, int]:
        """The stream's plan and this request's shard index, or StreamRefused saying what to fix."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise StreamRefused(f"batch_size must be a positive integer, got {batch_size!r}")
        if shard is None:
            index, count = 0, 1
        elif (isinstance(shard, (list, tuple)) and len(shard) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in shard) and 0 <= shard[0] < shard[1]):
            index, count = shard
        else:
            raise StreamRefused(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
        if count > 1 and self.world_size == 1:
            raise StreamRefused(f"stream {stream_id!r}: shards are for the ranks of a DDP group stepping together; "
                                "a one-process run has nobody to step with: read the stream whole (shard=None)")
        if count > self.world_size:
            raise StreamRefused(f"stream {stream_id!r}: {count} shards, but the job has {self.world_size} ranks")
        wanted = StreamPlan(stream_id, batch_size, count)
        known = self._plans.get(stream_id)
        if known is not None and known != wanted:
            raise StreamRefused(
                f"stream {stream_id!r} is read with batch_size {known.batch_size} in {known.shards} shard(s); this "
                f"request asks for batch_size {batch_size} in {count}. A stream's batch size and sharding are fixed "
                "by its first request: use another stream id for another plan")
        owner = self._owner.get((stream_id, index))
        if owner is not None and owner != rank:
            what = f"shard {index} of stream {stream_id!r}" if count > 1 else f"stream {stream_id!r}"
            raise StreamRefused(f"{what} is read by rank {owner}; each rank reads its own streams or shards")
        return wanted, index

    def draw(self, rank: int, stream_id: str, batch_size, shard) -> Grant:
        """This rank's next batch of the stream (shard), or BudgetExhausted / TimeExhausted for every shard
        of the step alike."""
        with self._lock:
            plan, index = self._plan(rank, stream_id, batch_size, shard)
            self._plans.setdefault(stream_id, plan)
            self._owner.setdefault((stream_id, index), rank)
            served = self._windows.get((stream_id, index), 0)
            step = served // plan.batch_size
            steps = self._pending.setdefault(stream_id, {})
            decision = steps.get(step)
            if decision is None:
                decision = steps[step] = self._decide(plan)
            decision.readers.add(index)
            if len(decision.readers) == plan.shards:
                del steps[step]  # every shard has read it: nobody can ask for this step again
            if not decision.granted:
                raise decision.refusal(decision.message)
            self._windows[(stream_id, index)] = served + plan.batch_size
            stream_windows = self._stream_windows[stream_id] = self._stream_windows.get(stream_id, 0) + plan.batch_size
            self._served += plan.batch_size * self.seq_len
            first = (step * plan.shards + index) * plan.batch_size  # shards deal whole batches round-robin
            asked = self._checkpoint_from is not None and step >= self._checkpoint_from.get(stream_id, 0)
            return Grant(first, plan.batch_size, served + plan.batch_size, stream_windows * self.seq_len, self._served,
                         asked)

    def request_checkpoint(self) -> None:
        """Ask every rank for a checkpoint through its batches: from now on, a stream's batches carry the request
        from the step its farthest shard stood at (a stream not read yet: from its first step). The first
        request fixes the steps."""
        with self._lock:
            if self._checkpoint_from is None:
                steps: dict[str, int] = {}
                for (stream_id, _), windows in self._windows.items():
                    step = windows // self._plans[stream_id].batch_size
                    steps[stream_id] = max(steps.get(stream_id, 0), step)
                self._checkpoint_from = steps

    def _decide(self, plan: StreamPlan) -> _Decision:
        """One decision for a whole step: the clock first (a closed clock charges nothing), then the budget."""
        if not self.clock.admit():
            return _Decision(False, TimeExhausted,
                f"the training-time cap of {self.clock.limit_s:g} s is reached ({self.clock.seconds():.1f} s trained, "
                f"{self._served / self.epoch_tokens:.4f} epochs served); save the final snapshot now")
        windows = plan.step_windows()
        targets = windows * self.seq_len
        if self._reserved + targets <= self.allowed_targets:
            self._reserved += targets
            return _Decision(True)
        remaining = self.allowed_targets - self._reserved
        return _Decision(False, BudgetExhausted,
            f"stream {plan.stream_id!r} asked for {windows} more window(s) ({targets:,} target tokens"
            f"{f' over its {plan.shards} shards' if plan.shards > 1 else ''}) but only {max(remaining, 0):,} remain "
            f"of the budget of {self.budget_epochs:g} epochs ({self.allowed_targets:,} tokens); "
            f"{self._served / self.epoch_tokens:.4f} epochs were served")

    # ---- fitness ------------------------------------------------------------------------------------
    def note_fitness(self, rank: int, tokens: int) -> None:
        """Fitness windows are data: reading them starts the training clock (they are held-out training
        documents, and training on them before the first batch must not be free of the cap)."""
        with self._lock:
            self.clock.start()
            self._fitness[rank] = self._fitness.get(rank, 0) + int(tokens)

    # ---- readings -----------------------------------------------------------------------------------
    def served_targets(self) -> int:
        with self._lock:
            return self._served

    def reserved_targets(self) -> int:
        with self._lock:
            return self._reserved

    def pending_steps(self) -> int:
        """Decisions some shard has not read yet (for tests and diagnostics)."""
        with self._lock:
            return sum(len(steps) for steps in self._pending.values())

    def meter_state(self) -> MeterState:
        """The record's counts: windows and targets served per stream (shard), fitness tokens read."""
        with self._lock:
            state = MeterState()
            for (stream_id, index), windows in sorted(self._windows.items()):
                key = meter_key(stream_id, index, self._plans[stream_id].shards)
                state.windows[key] = windows
                state.targets[key] = windows * self.seq_len
            state.fitness_tokens = sum(self._fitness.values())
            return state
