"""Training recipes that run against a Slowrun run context: the single model, the naive ensemble, q0.

The context is anything with the harness's RunContext methods (`train_stream`, `save_snapshot`,
`checkpoint`, `resume_state`, `log`, `set_ensemble`, plus `seed`, `budget`, `seq_len`, `vocab_size`,
`epoch_tokens`, `device`, `rank`, `world_size`, `rank_groups`); this module imports nothing from the
harness, so q0 stays a user of the harness like any other method.

Every recipe trains where the context says (``ctx.device``): models are built on the meta device and
materialised there (:func:`q0_reference.model.build_on_device`), batches are moved there as they arrive,
and the teacher lives there too. ``batch_size`` is the global batch of an optimizer step, the same in
one process and in eight (:mod:`q0_reference.batching`); independent models (trajectories, members) are
spread over rank groups (:mod:`q0_reference.placement`). Every recipe checkpoints at its snapshots
(policy: :mod:`q0_reference.checkpointing`) and resumes from `ctx.resume_state()`, so a killed run
continues with identical losses on CPU.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from q0_reference import checkpointing
from q0_reference.batching import BatchPlan, auto_micro_batch, microbatches
from q0_reference.checkpointing import CheckpointClock, CheckpointPolicy
from q0_reference.distill import DistillSpec, Teacher
from q0_reference.errors import Q0ConfigError
from q0_reference.model import GPT, GPTConfig, build_on_device
from q0_reference.optim import OptimizerSpec, build_optimizer, set_multipliers
from q0_reference.perturb import PerturbationSchedule, cycle_progress, perturb_weights, seeded_generator
from q0_reference import timed
from q0_reference.placement import Placement, choose_group_count, group_sizes, place
from q0_reference.planner import Plan, PlannerThresholds, naive_ensemble_members, plan
from q0_reference.runtime import Runtime
from q0_reference.schedule import WarmupDecaySchedule, block_triangular_batches, steps_for_epochs
from q0_reference.throughput import Throughput
from q0_reference.trainer import accumulated_step

SNAPSHOT_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                   "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Recipe:
    """Model, optimizer, batch and runtime settings shared by every recipe; built from a method's hparams.

    ``batch_size`` is the global batch (sequences per optimizer step); ``micro_batch_size`` the sequences
    per rank per forward (0: the rank's whole share, no accumulation)."""

    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    mlp: str = "relu2"
    mlp_multiple: int = 64
    dropout: float = 0.0
    logit_softcap: float = 0.0  # 0: no soft-cap
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    batch_size: int = 8
    micro_batch_size: int = 0
    warmup_steps: int = 20
    final_lr_mult: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 10
    autocast: str = "auto"
    compile: str = "auto"
    snapshot_dtype: str = "auto"
    checkpoint: CheckpointPolicy = field(default_factory=CheckpointPolicy)
    rank_groups: int = 0  # 0: the placement rule decides

    def __post_init__(self):
        if self.snapshot_dtype not in ("auto", *SNAPSHOT_DTYPES):
            raise Q0ConfigError(f"snapshot_dtype must be auto, float32 or bfloat16, got {self.snapshot_dtype!r}")
        if isinstance(self.micro_batch_size, bool) or not isinstance(self.micro_batch_size, int) or self.micro_batch_size < 0:
            raise Q0ConfigError(f"micro_batch_size must be an integer >= 0, got {self.micro_batch_size!r}")

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> "Recipe":
        opt = OptimizerSpec(kind=hp.get("optimizer", "adamw"), lr=hp.get("lr", 3e-3),
                            embedding_lr=hp.get("embedding_lr", 0.0) or None, head_lr=hp.get("head_lr", 0.0) or None,
                            matrix_lr=hp.get("matrix_lr", 0.02), weight_decay=hp.get("weight_decay", 0.1),
                            betas=(hp.get("beta1", 0.9), hp.get("beta2", 0.95)), eps=hp.get("adam_eps", 1e-8),
                            momentum=hp.get("momentum", 0.95))
        names = ("d_model", "n_layer", "n_head", "mlp", "mlp_multiple", "dropout", "logit_softcap", "batch_size",
                 "micro_batch_size", "warmup_steps", "final_lr_mult", "grad_clip", "log_every", "autocast",
                 "compile", "snapshot_dtype", "rank_groups")
        return cls(optimizer=opt, checkpoint=CheckpointPolicy.from_hparams(hp), **{k: hp[k] for k in names if k in hp})

    def model_config(self, ctx) -> GPTConfig:
        return GPTConfig(vocab_size=ctx.vocab_size, seq_len=ctx.seq_len, n_layer=self.n_layer, n_head=self.n_head,
                         d_model=self.d_model, mlp=self.mlp, mlp_multiple=self.mlp_multiple, dropout=self.dropout,
                         logit_softcap=self.logit_softcap or None)

    def model(self, ctx) -> GPT:
        """A freshly initialised model on the context's device (seed torch first)."""
        return build_on_device(self.model_config(ctx), getattr(ctx, "device", None) or "cpu")

    def runtime(self, ctx) -> Runtime:
        return Runtime.resolve(getattr(ctx, "device", None) or "cpu", self.autocast, self.compile)

    def tokens_per_step(self, ctx) -> int:
        return self.batch_size * ctx.seq_len

    def snapshot_torch_dtype(self, runtime: Runtime) -> torch.dtype:
        if self.snapshot_dtype == "auto":
            return torch.bfloat16 if runtime.is_cuda else torch.float32
        return SNAPSHOT_DTYPES[self.snapshot_dtype]


class _SnapshotView:
    """What ``ctx.save_snapshot`` reads of a model (its build spec and weights), with the weights cast to
    ``dtype``: bf16 snapshots are half the size; evaluation loads them into a float32 model."""

    def __init__(self, model: GPT, dtype: torch.dtype):
        self.model, self.dtype = model, dtype

    def build_spec(self) -> dict:
        return self.model.build_spec()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in self.model.state_dict().items()}


def _snapshot(model: GPT, dtype: torch.dtype):
    return model if dtype == torch.float32 else _SnapshotView(model, dtype)


class _Student:
    """The model one rank trains: the plain module (weights, snapshots, checkpoints), the forward the step
    calls (DDP over the rank group, compiled when asked), and its optimizer."""

    def __init__(self, ctx, recipe: Recipe, runtime: Runtime, placement: Placement, seed: int):
        torch.manual_seed(seed)
        self.model = build_on_device(recipe.model_config(ctx), runtime.device)
        self.optimizer = build_optimizer(self.model, recipe.optimizer,
                                         process_group=placement.process_group if placement.distributed else None)
        self.forward = runtime.compiled(placement.wrap(self.model, runtime.device,
                                                           compiled=runtime.compiles))
        self.runtime, self.recipe = runtime, recipe

    def step(self, batches, teacher=None, *, step: int, distill: DistillSpec | None = None) -> float:
        spec = distill or DistillSpec()
        return accumulated_step(self.forward, self.optimizer, batches, teacher, alpha=spec.alpha,
                                temperature=spec.temperature, max_grad_norm=self.recipe.grad_clip, step=step,
                                autocast=self.runtime.autocast)

    def load(self, shared: Mapping[str, Any]) -> None:
        self.model.load_state_dict(shared["model"])
        self.optimizer.load_state_dict(shared["optimizer"])

    def shared_state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}


def _check_group_agrees(placement: Placement, position: tuple) -> None:
    """Every rank of a group must resume from the same point; refuse clearly if one checkpoint is newer."""
    if not placement.distributed:
        return
    import torch.distributed as dist

    box = [position if placement.is_leader else None]
    dist.broadcast_object_list(box, src=placement.leader_rank, group=placement.process_group,
                               device=checkpointing._comm_device(placement))
    if box[0] != position:
        raise Q0ConfigError(f"rank group {placement.index} resumed from different checkpoints (leader at {box[0]}, "
                            f"this rank at {position}); the run was killed between its ranks' checkpoints and cannot "
                            f"resume consistently")


def _write_checkpoint(checkpoint_fn, placement: Placement, light: dict, shared: dict) -> None:
    """The leader writes first; the others follow once it has (so a kill leaves them at most one small
    write apart)."""
    checkpointing.write(_Fn(checkpoint_fn), placement, light, shared)
    if placement.distributed:
        import torch.distributed as dist

        dist.barrier(group=placement.process_group)


class _Fn:
    def __init__(self, fn):
        self.checkpoint = fn


def _snapshot_steps(total_steps: int, steps_per_epoch: float, every_epochs: float) -> list[int]:
    """Steps after which to snapshot: every `every_epochs` epochs (0 = only the end), and after the last."""
    steps = {total_steps}
    if every_epochs > 0:
        k = 1
        while (step := int(round(k * every_epochs * steps_per_epoch))) < total_steps:
            steps.add(step)
            k += 1
    return sorted(steps)


class _Ema:
    """An exponential moving average of a model's weights (a smoother predictor from the same run).

    The decay ramps up as (1 + n) / (10 + n) towards `decay`: with a fixed 0.99 a member trained for
    only a few dozen steps would still be half its random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for ema, live in zip(self.model.parameters(), model.parameters()):
            ema.lerp_(live, 1.0 - decay)


def _log_point(ctx, throughput: Throughput, **entry) -> None:
    ctx.log(**entry, **throughput.report())


def train_single(ctx, recipe: Recipe, *, epochs: float, stream_id: str = "main", seed: int = 0, tag_prefix: str = "",
                 snapshot_every_epochs: float = 1.0, ema_decay: float | None = None, resume: dict | None = None,
                 on_checkpoint=None, placement: Placement | None = None, snapshot_meta: dict | None = None) -> str:
    """One model, warm-up then cosine decay over `epochs`; returns the tag of its final snapshot.

    With `ema_decay` the snapshots hold the EMA weights. `on_checkpoint(state)` lets a caller wrap the
    state it checkpoints (the naive ensemble adds which member it is on). In a distributed run the model
    trains data-parallel on its rank group (all ranks, unless a caller places it). `snapshot_meta` is
    added to every snapshot's meta (the naive ensemble says there how its members were chosen)."""
    runtime = recipe.runtime(ctx)
    runtime.configure_backends()
    if placement is None:
        placement = place(ctx, 1, [recipe.batch_size], recipe.micro_batch_size, recipe.rank_groups)
    batch = placement.batch_plan(recipe.batch_size, recipe.micro_batch_size)
    student = _Student(ctx, recipe, runtime, placement, seed)
    model, optimizer = student.model, student.optimizer
    ema = _Ema(model, ema_decay) if ema_decay else None
    tokens_per_step = batch.tokens_per_step(ctx.seq_len)
    total_steps = steps_for_epochs(epochs, ctx.epoch_tokens, tokens_per_step)
    if total_steps < 1:
        raise ValueError(f"{epochs:g} epochs is less than one step of {tokens_per_step} tokens; use smaller batches")
    schedule = WarmupDecaySchedule(total_steps, warmup_steps=min(recipe.warmup_steps, total_steps - 1),
                                   final_lr_mult=recipe.final_lr_mult)
    snapshots = _snapshot_steps(total_steps, ctx.epoch_tokens / tokens_per_step, snapshot_every_epochs)
    snapshot_dtype = recipe.snapshot_torch_dtype(runtime)
    step = 0
    if resume is not None:
        _check_group_agrees(placement, ("step", resume["step"]))
        keys = ("model", "optimizer") + (("ema",) if ema is not None else ())
        shared = checkpointing.share_from_leader(resume, keys, placement)
        student.load(shared)
        if ema is not None:
            ema.model.load_state_dict(shared["ema"])
            ema.updates = resume["step"]
        step = resume["step"]
    checkpoint = on_checkpoint or ctx.checkpoint
    clock = CheckpointClock(recipe.checkpoint, placement)

    def save() -> None:
        shared = student.shared_state()
        if ema is not None:
            shared["ema"] = ema.model.state_dict()
        _write_checkpoint(checkpoint, placement, {"step": step}, shared)
        clock.taken()

    stream = ctx.train_stream(stream_id, batch.micro_batch, shard=placement.shard)
    throughput = Throughput(runtime.device)
    tag = None
    while step < total_steps:
        mult = schedule.at(step)
        set_multipliers(optimizer, mult.lr, mult.weight_decay)
        loss = student.step(microbatches(stream, batch, runtime.to_device), step=step)
        throughput.add(tokens_per_step)
        if ema is not None:
            ema.update(model)
        step += 1
        if step % recipe.log_every == 0 or step == total_steps:
            _log_point(ctx, throughput, stream=stream_id, step=step, loss=loss, lr_mult=mult.lr)
        if step in snapshots:
            tag = f"{tag_prefix}ep{ctx.epochs:07.3f}"
            saved = ema.model if ema is not None else model
            ctx.save_snapshot(_snapshot(saved, snapshot_dtype), tag,
                              meta={"stream": stream_id, "step": step, **(snapshot_meta or {})},
                              graph=saved, **placement.snapshot_args)
            if clock.due() or step == total_steps:
                save()
                continue
        if step < total_steps and checkpointing.requested(ctx):  # the scheduler's warning: keep this step's work
            save()
    return tag if tag is not None else ctx.snapshot_tags()[-1]


def train_naive_ensemble(ctx, recipe: Recipe, members: int, ema_decay: float, member_min_epochs: float = 1.0) -> None:
    """N independent models (own seeds and data orders), E/N epochs each, averaged uniformly. N is as many
    as give every member at least `member_min_epochs` (where a single model stops improving), at most
    `members` (see :func:`q0_reference.planner.naive_ensemble_members`); every snapshot's meta says so. In a
    distributed run the members are spread over rank groups like q0's trajectories."""
    member_plan = naive_ensemble_members(ctx.budget, member_min_epochs, members)
    n, per_member = member_plan.members, member_plan.epochs_per_member
    ctx.log(event="members", **member_plan.to_meta())
    placement = place(ctx, n, [recipe.batch_size], recipe.micro_batch_size, recipe.rank_groups)
    mine = placement.jobs(n)
    state = ctx.resume_state() or {}
    finals: list[str] = list(state.get("finals", []))
    for member in mine[len(finals):]:
        resume = state.get("member_state") if state.get("member") == member else None

        def wrap(member_state, member=member):
            ctx.checkpoint({"finals": finals, "member": member, "member_state": member_state})

        finals.append(train_single(ctx, recipe, epochs=per_member,
                                   stream_id=f"member{member}", seed=ctx.seed * 1000 + member, tag_prefix=f"m{member}-",
                                   snapshot_every_epochs=0, ema_decay=ema_decay, resume=resume, on_checkpoint=wrap,
                                   placement=placement, snapshot_meta={"member_choice": member_plan.rule()}))
        ctx.checkpoint({"finals": finals, "member": member + 1, "member_state": None})
    tags = [tag for finals_of_rank in ctx.gather("naive-ensemble-finals", finals if placement.is_leader else []) for tag in finals_of_rank]
    if getattr(ctx, "rank", 0) == 0:
        ctx.set_ensemble({tag: 1.0 for tag in tags})


@dataclass(frozen=True)
class Q0Settings:
    lr_floor: float = 0.08
    wd_floor: float = 0.7
    distill: DistillSpec = field(default_factory=DistillSpec)
    perturbation: PerturbationSchedule | None = None
    thresholds: PlannerThresholds = field(default_factory=PlannerThresholds)
    n_trajectories: int = 0  # 0: the planner decides
    cycle_epochs: float = 0.0  # 0: the planner decides
    lr_endpoint: bool = True  # the last step of a cycle at lr_floor (False: PR #90's convention)
    perturb_progress: str = "run"  # "run": over all trajectories in turn; "trajectory": each its own (PR #90)
    batch_floor: int = 0  # > 0: PR #90's block-triangular batch schedule from batch_floor to batch_size
    fitness_tokens: int = 0  # > 0: score each snapshot on this many fitness tokens (needed by final_top_k)
    final_top_k: int = 0  # > 0: predict with the K snapshots of largest fitted weight; 0: the harness's prior

    def __post_init__(self):
        if self.perturb_progress not in ("run", "trajectory"):
            raise Q0ConfigError(f"perturb_progress must be run or trajectory, got {self.perturb_progress!r}")
        if self.final_top_k and not self.fitness_tokens:
            raise Q0ConfigError("final_top_k needs fitness_tokens > 0: the weights are fitted on fitness scores")
        if self.batch_floor < 0 or self.fitness_tokens < 0 or self.final_top_k < 0:
            raise Q0ConfigError("batch_floor, fitness_tokens and final_top_k must be >= 0")

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> "Q0Settings":
        perturb = None
        if hp.get("perturb_start", 0.0) > 0:
            perturb = PerturbationSchedule(hp["perturb_start"], hp.get("perturb_end", 0.05))
        thresholds = PlannerThresholds(cycle_epochs=hp.get("cycle_epochs", 2.0) or 2.0,
                                       warmup_cycles=hp.get("warmup_cycles", 8),
                                       small_budget_epochs=hp.get("small_budget_epochs", 8.0))
        return cls(lr_floor=hp.get("lr_floor", 0.08), wd_floor=hp.get("wd_floor", 0.7),
                   distill=DistillSpec(hp.get("alpha", 0.45), hp.get("temperature", 1.2)), perturbation=perturb,
                   thresholds=thresholds, n_trajectories=hp.get("n_trajectories", 0),
                   lr_endpoint=hp.get("lr_reaches_floor", True), perturb_progress=hp.get("perturb_progress", "run"),
                   batch_floor=hp.get("batch_floor", 0), fitness_tokens=hp.get("fitness_tokens", 0),
                   final_top_k=hp.get("final_top_k", 0))

    def cycle_batches(self, batch_size: int, n_cycles: int) -> tuple[int, ...]:
        """The global batch of each cycle: ``batch_size`` throughout, or PR #90's block-triangular schedule."""
        if not self.batch_floor or self.batch_floor == batch_size:
            return (batch_size,) * n_cycles
        return block_triangular_batches(n_cycles, batch_size, self.batch_floor)


def q0_plan(budget: float, settings: Q0Settings) -> Plan:
    """The planner's allocation, with the trajectory count overridden when the settings fix it."""
    base = plan(budget, settings.thresholds)
    if not settings.n_trajectories or base.mode == "packed" or settings.n_trajectories == base.n_trajectories:
        return base
    staircase = ((float("inf"), settings.n_trajectories),)
    return plan(budget, PlannerThresholds(**{**settings.thresholds.__dict__, "trajectory_staircase": staircase,
                                             "max_trajectories": settings.n_trajectories}))


@dataclass(frozen=True)
class Q0Layout:
    """How a q0 run is laid out on this process: its plan, placement, per-cycle batches and schedule."""

    allocation: Plan
    placement: Placement
    batches: tuple[BatchPlan, ...]  # one per cycle
    schedule: Any  # CyclicSchedule

    def batch_at(self, step: int) -> BatchPlan:
        cycle = self.schedule.cycle_index(step)
        return self.batches[0 if cycle is None else cycle]


def q0_layout(ctx, recipe: Recipe, settings: Q0Settings, budget: float | None = None) -> Q0Layout:
    """The layout for `budget` epochs (the run's budget unless the clock allows less)."""
    allocation = q0_plan(ctx.budget if budget is None else budget, settings)
    globals_ = settings.cycle_batches(recipe.batch_size, allocation.cycles_per_trajectory)
    placement = place(ctx, allocation.n_trajectories, globals_, recipe.micro_batch_size, recipe.rank_groups)
    micro = recipe.micro_batch_size or auto_micro_batch(globals_, placement.size)
    batches = tuple(BatchPlan(g, micro, placement.size) for g in globals_)
    tokens = [b.tokens_per_step(ctx.seq_len) for b in batches]
    schedule = allocation.trajectory_schedule(ctx.epoch_tokens, tokens[0] if len(set(tokens)) == 1 else tokens,
                                              lr_floor=settings.lr_floor, wd_floor=settings.wd_floor,
                                              warmup_steps=recipe.warmup_steps, endpoint=settings.lr_endpoint)
    return Q0Layout(allocation, placement, batches, schedule)


def _fitness_windows(ctx, settings: Q0Settings, placement: Placement):
    if not settings.fitness_tokens or not placement.is_leader:
        return None
    from q0_reference.selection import fitness_slice

    return fitness_slice(ctx.fitness_windows(), settings.fitness_tokens, ctx.seq_len)


def _finish_q0(ctx, settings: Q0Settings, placement: Placement, fitness: Mapping[str, torch.Tensor]) -> None:
    """The final predictor: the harness's prior over all snapshots, or the method's top-K selection over
    the fitness scores that every group's leader gathered."""
    if not settings.final_top_k:
        ctx.set_ensemble("prior")
        return
    from q0_reference.selection import select_top_k

    scores = {}
    for part in ctx.gather("q0-fitness-scores", dict(fitness) if placement.is_leader else {}):
        scores.update(part)
    if getattr(ctx, "rank", 0) == 0:
        weights = select_top_k(scores, settings.final_top_k)
        ctx.log(event="selection", candidates=len(scores), kept=len(weights), top_k=settings.final_top_k)
        ctx.set_ensemble(weights)


def _steps_to_cycle_end(schedule, step: int) -> int:
    """Steps from `step` (the next to run) to the end of its cycle, that step included."""
    ends = [end for end in schedule.cycle_end_steps() if end >= step]
    return (ends[0] if ends else schedule.total_steps - 1) - step + 1


def _out_of_time(ctx, guard: "timed.CapGuard", schedule, allocation: Plan, trajectory: int, step: int,
                 log_every: int, cut: bool) -> bool:
    """Whether the group must stop now, before the cap: the steps up to its next check point (the next log
    point or cycle end) and a snapshot would not fit. Every rank of the group gets its leader's answer."""
    cycle = schedule.cycle_index(step)
    to_next = min(log_every - step % log_every, _steps_to_cycle_end(schedule, step))
    if not guard.should_stop(to_next, cycle is not None and allocation.has_teacher(cycle)):
        return False
    ctx.log(event="stopped for the cap", trajectory=trajectory, step=step,
            steps_to_cycle_end=_steps_to_cycle_end(schedule, step), cut_mid_cycle=cut,
            remaining_s=ctx.remaining_seconds)
    return True


def _clock_plan(ctx, recipe: Recipe, settings: Q0Settings, runtime: Runtime, state: Mapping[str, Any],
                teacher_dtype) -> tuple[float, "timed.StepCost"]:
    """The epoch budget the training clock allows, and the step cost it was planned with (q0_reference.timed).

    A first trajectory's student is built where the run's budget would place it and warmed up on random
    batches (compiling outside the cap); a resumed run warms up the same way but keeps the budget its
    checkpoint carries, so its schedule is the one it started."""
    first = q0_layout(ctx, recipe, settings)
    placement = first.placement
    jobs = placement.jobs(first.allocation.n_trajectories) or [0]
    student = _Student(ctx, recipe, runtime, placement, ctx.seed * 1000 + jobs[0])
    cost = timed.measure_step_cost(
        ctx, student, first.batches[0], runtime, settings.distill,
        lambda: Teacher(student.model, dtype=teacher_dtype, autocast=runtime.autocast, compile_fn=runtime.compiled))
    prepare = getattr(ctx, "prepare_snapshot", None)  # the first snapshot's graph export, outside the clock too
    exported = None
    if prepare is not None and placement.is_leader:
        started = time.perf_counter()
        exported = {"graph_ready": bool(prepare(student.model)), "export_s": round(time.perf_counter() - started, 6)}
    world = getattr(ctx, "world_size", 1)

    def time_of(epochs: float) -> float:
        allocation = q0_plan(epochs, settings)
        if world <= 1:
            n_groups, size = 1, 1
        else:
            batches = settings.cycle_batches(recipe.batch_size, allocation.cycles_per_trajectory)
            n_groups = choose_group_count(allocation.n_trajectories, world, batches, recipe.micro_batch_size,
                                          recipe.rank_groups)
            size = min(group_sizes(world, n_groups))
        return timed.plan_seconds(allocation, ctx.epoch_tokens, cost, n_groups, size)

    kept = state.get("clock_budget")
    left = ctx.remaining_seconds
    budget = float(kept) if kept is not None else timed.clock_budget(ctx.budget, left, time_of)
    if world > 1:  # rank 0's plan for every rank: the layout (and the rank groups it makes) must be one
        budget = float(ctx.gather("q0-clock-budget", budget)[0])
    ctx.log(event="clock plan", budget_epochs=ctx.budget, planned_epochs=budget, seconds_left=left,
            planned_seconds=time_of(budget), resumed=kept is not None, **cost.to_log(), **(exported or {}))
    return budget, cost


def train_q0(ctx, recipe: Recipe, settings: Q0Settings, trajectories: list[int] | None = None) -> Plan:
    """Hyper-epoch pretraining: cyclic trajectories, a snapshot per cycle, chain distillation.

    Each trajectory runs the cyclic LR/anti-phase WD schedule; the optimizer state carries across cycles.
    After the warm-up cycles every cycle trains against the previous snapshot of the same trajectory as a
    frozen teacher (taken before the weights are perturbed). The final predictor is the harness's learned
    prior over all snapshots, or the top K of the method's own fit (``final_top_k``). In a distributed
    run the trajectories are spread over rank groups (DDP inside a group of several ranks, see
    q0_reference.placement); `trajectories` restricts by hand which ones this process trains.
    """
    runtime = recipe.runtime(ctx)
    runtime.configure_backends()
    state = ctx.resume_state() or {}
    teacher_dtype = torch.bfloat16 if runtime.bf16 else None
    budget, cost = ctx.budget, None
    if getattr(ctx, "time_limit_s", None) is not None:
        budget, cost = _clock_plan(ctx, recipe, settings, runtime, state, teacher_dtype)
    layout = q0_layout(ctx, recipe, settings, budget)
    allocation, placement, schedule = layout.allocation, layout.placement, layout.schedule
    guard = None if cost is None else timed.CapGuard(ctx, cost, placement, runtime.device)
    ctx.log(event="plan", trajectories=allocation.n_trajectories, cycles=allocation.cycles_per_trajectory,
            cycle_epochs=allocation.cycle_epochs, warmup_cycles=allocation.warmup_cycles, mode=allocation.mode,
            steps_per_trajectory=schedule.total_steps, rank_groups=placement.n_groups, group_size=placement.size,
            micro_batch=layout.batches[0].micro_batch,
            global_batches=sorted({b.global_batch for b in layout.batches}),
            accumulation=sorted({b.accumulation for b in layout.batches}))
    if trajectories is None:
        trajectories = placement.jobs(allocation.n_trajectories)
    done = set(state.get("done", []))
    fitness: dict[str, torch.Tensor] = {}
    if state:
        _check_group_agrees(placement, (sorted(done), state.get("trajectory"), state.get("step")))
        if placement.is_leader:  # scores of snapshots taken before the checkpoint (only leaders keep them)
            fitness.update(state.get("fitness", {}))
    windows = _fitness_windows(ctx, settings, placement)
    snapshot_dtype = recipe.snapshot_torch_dtype(runtime)
    plan_state = {} if cost is None else {"clock_budget": budget}  # (a resumed run keeps its plan)
    stop = False  # the clock: this group stops after the snapshot it takes now
    total_steps = schedule.total_steps * allocation.n_trajectories
    n_cycles = allocation.cycles_per_trajectory
    clock = CheckpointClock(recipe.checkpoint, placement)
    throughput = Throughput(runtime.device)
    for t in trajectories:
        if t in done:
            continue
        student = _Student(ctx, recipe, runtime, placement, ctx.seed * 1000 + t)
        model, optimizer = student.model, student.optimizer
        generator = seeded_generator(ctx.seed * 1000 + t + 7, runtime.device)  # noise drawn beside the weights
        teacher: Teacher | None = None
        step = 0

        def perturb(cycle: int, step: int) -> None:
            if settings.perturb_progress == "trajectory":
                progress = cycle_progress(cycle, n_cycles)
            else:
                progress = (t * schedule.total_steps + step) / total_steps
            perturb_weights(model, settings.perturbation.scale(progress), generator)
            if placement.distributed:  # the same noise on every rank already; make it bit-exact regardless
                import torch.distributed as dist

                for p in model.parameters():
                    dist.broadcast(p.data, src=placement.leader_rank, group=placement.process_group)

        if state.get("trajectory") == t:
            # Mid-cycle (a checkpoint on request) the teacher was stored with the weights, by the group's leader
            # only: every rank knows it from its own light state, and takes the teacher from the leader.
            stored_teacher = state.get("teacher_stored") or "teacher" in state  # (older versions stored one too)
            keys = ("model", "optimizer", "generator") + (("teacher",) if stored_teacher else ())
            shared = checkpointing.share_from_leader(state, keys, placement)
            student.load(shared)
            generator.set_state(shared["generator"])
            step = state["step"]
            if stored_teacher:  # the teacher as it was
                if shared.get("teacher") is not None:
                    teacher = Teacher(model, dtype=teacher_dtype, autocast=runtime.autocast,
                                      compile_fn=runtime.compiled)
                    teacher.module.load_state_dict(shared["teacher"])
            elif step > 0 and step < schedule.total_steps:
                finished = schedule.cycle_index(step - 1)
                if finished is not None and allocation.has_teacher(finished + 1):
                    teacher = Teacher(model, dtype=teacher_dtype, autocast=runtime.autocast,
                                      compile_fn=runtime.compiled)
                if state.get("perturb_pending") and finished is not None:
                    perturb(finished, step)
        stream = None
        micro = None
        if guard is not None and step < schedule.total_steps:  # a trajectory whose next cycle cannot end in time
            stop = _out_of_time(ctx, guard, schedule, allocation, t, step, recipe.log_every, cut=False)
            if stop:
                break
        while step < schedule.total_steps:
            batch = layout.batch_at(step)
            if batch.micro_batch != micro:
                micro = batch.micro_batch
                stream = ctx.train_stream(f"trajectory{t}", micro, shard=placement.shard)
            mult = schedule.at(step)
            set_multipliers(optimizer, mult.lr, mult.weight_decay)
            cycle = schedule.cycle_index(step)
            use_teacher = teacher is not None and cycle is not None and allocation.has_teacher(cycle)
            loss = student.step(microbatches(stream, batch, runtime.to_device), teacher if use_teacher else None,
                                step=step, distill=settings.distill)
            throughput.add(batch.tokens_per_step(ctx.seq_len))
            is_end = schedule.is_cycle_end(step)
            step += 1
            checking = step % recipe.log_every == 0 or is_end
            if checking:
                _log_point(ctx, throughput, stream=f"trajectory{t}", step=step, loss=loss, lr_mult=mult.lr,
                           wd_mult=mult.weight_decay, distilled=use_teacher)
            if guard is not None:
                guard.stepped()
                if checking and step < schedule.total_steps:
                    stop = _out_of_time(ctx, guard, schedule, allocation, t, step, recipe.log_every,
                                        cut=not is_end)
            cut = stop and not is_end
            if not (is_end or cut):
                if checkpointing.requested(ctx):  # the scheduler's warning, mid-cycle: the teacher goes with it
                    _write_checkpoint(ctx.checkpoint, placement,
                                      {"done": sorted(done), "trajectory": t, "step": step, "perturb_pending": False,
                                       "teacher_stored": True, **plan_state},
                                      {**student.shared_state(), "generator": generator.get_state(),
                                       "fitness": fitness,
                                       "teacher": None if teacher is None else teacher.module.state_dict()})
                continue
            tag = f"t{t}-c{cycle:03d}" + ("-cut" if cut else "")
            ctx.save_snapshot(_snapshot(model, snapshot_dtype), tag, meta={
                "trajectory": t, "cycle": cycle, "distilled": use_teacher, "step": step,
                **({"cut_at_cap": True} if cut else {})}, graph=model, **placement.snapshot_args)
            if windows is not None:
                from q0_reference.selection import target_logprobs

                fitness[tag] = target_logprobs(model, windows, to_device=runtime.to_device, autocast=runtime.autocast)
            if stop:
                break
            more = step < schedule.total_steps
            if more and allocation.has_teacher(cycle + 1):
                if teacher is None:
                    teacher = Teacher(model, dtype=teacher_dtype, autocast=runtime.autocast,
                                      compile_fn=runtime.compiled)
                else:
                    teacher.load_from(model)
            perturbing = more and settings.perturbation is not None
            due = clock.due()  # (a collective when the policy has a clock: every rank asks, every time)
            if (due or checkpointing.requested(ctx)) and more:
                _write_checkpoint(ctx.checkpoint, placement,
                                  {"done": sorted(done), "trajectory": t, "step": step, "perturb_pending": perturbing,
                                   **plan_state},
                                  {**student.shared_state(), "generator": generator.get_state(), "fitness": fitness})
                clock.taken()
            if perturbing:
                perturb(cycle, step)
        if stop:  # the clock ends this group's training here: no more trajectories, no checkpoint to resume
            break
        done.add(t)
        state = {}
        _write_checkpoint(ctx.checkpoint, placement, {"done": sorted(done), "trajectory": None, **plan_state},
                          {"fitness": fitness})
        clock.taken()
        del student, model, optimizer, teacher
    _finish_q0(ctx, settings, placement, fitness)
    return allocation
