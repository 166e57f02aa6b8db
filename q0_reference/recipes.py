"""Training recipes that run against a Slowrun run context: the single model, the naive ensemble, q0.

The context is anything with the harness's RunContext methods (`train_stream`, `save_snapshot`,
`checkpoint`, `resume_state`, `log`, `set_ensemble`, plus `seed`, `budget`, `seq_len`, `vocab_size`,
`epoch_tokens`); this module imports nothing from the harness, so q0 stays a user of the harness like
any other method. Every recipe checkpoints beside each snapshot and resumes from `ctx.resume_state()`,
so a killed run continues with identical losses on CPU.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from q0_reference.distill import DistillSpec, frozen_teacher
from q0_reference.model import GPT, GPTConfig
from q0_reference.optim import OptimizerSpec, build_optimizer, set_multipliers
from q0_reference.perturb import PerturbationSchedule, perturb_weights, seeded_generator
from q0_reference.planner import Plan, PlannerThresholds, plan
from q0_reference.schedule import WarmupDecaySchedule, steps_for_epochs
from q0_reference.trainer import train_step


@dataclass(frozen=True)
class Recipe:
    """Model, optimizer and batch settings shared by every recipe; built from a method's hparams."""

    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    mlp: str = "relu2"
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    batch_size: int = 8
    warmup_steps: int = 20
    final_lr_mult: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 10

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> "Recipe":
        opt = OptimizerSpec(kind=hp.get("optimizer", "adamw"), lr=hp.get("lr", 3e-3),
                            matrix_lr=hp.get("matrix_lr", 0.02), weight_decay=hp.get("weight_decay", 0.1))
        names = ("d_model", "n_layer", "n_head", "mlp", "batch_size", "warmup_steps", "final_lr_mult", "grad_clip",
                 "log_every")
        return cls(optimizer=opt, **{k: hp[k] for k in names if k in hp})

    def model(self, ctx) -> GPT:
        return GPT(GPTConfig(vocab_size=ctx.vocab_size, seq_len=ctx.seq_len, n_layer=self.n_layer,
                             n_head=self.n_head, d_model=self.d_model, mlp=self.mlp))

    def tokens_per_step(self, ctx) -> int:
        return self.batch_size * ctx.seq_len


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


def train_single(ctx, recipe: Recipe, *, epochs: float, stream_id: str = "main", seed: int = 0, tag_prefix: str = "",
                 snapshot_every_epochs: float = 1.0, ema_decay: float | None = None, resume: dict | None = None,
                 on_checkpoint=None) -> str:
    """One model, warm-up then cosine decay over `epochs`; returns the tag of its final snapshot.

    With `ema_decay` the snapshots hold the EMA weights. `on_checkpoint(state)` lets a caller wrap the
    state it checkpoints (the naive ensemble adds which member it is on).
    """
    torch.manual_seed(seed)
    model = recipe.model(ctx)
    optimizer = build_optimizer(model, recipe.optimizer)
    ema = _Ema(model, ema_decay) if ema_decay else None
    tokens_per_step = recipe.tokens_per_step(ctx)
    total_steps = steps_for_epochs(epochs, ctx.epoch_tokens, tokens_per_step)
    if total_steps < 1:
        raise ValueError(f"{epochs:g} epochs is less than one step of {tokens_per_step} tokens; use smaller batches")
    schedule = WarmupDecaySchedule(total_steps, warmup_steps=min(recipe.warmup_steps, total_steps - 1),
                                   final_lr_mult=recipe.final_lr_mult)
    snapshots = _snapshot_steps(total_steps, ctx.epoch_tokens / tokens_per_step, snapshot_every_epochs)
    step = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if ema is not None:
            ema.model.load_state_dict(resume["ema"])
            ema.updates = resume["step"]
        step = resume["step"]
    checkpoint = on_checkpoint or ctx.checkpoint
    stream = ctx.train_stream(stream_id, recipe.batch_size)
    tag = None
    while step < total_steps:
        mult = schedule.at(step)
        set_multipliers(optimizer, mult.lr, mult.weight_decay)
        inputs, targets = next(stream)
        loss = train_step(model, optimizer, inputs, targets, max_grad_norm=recipe.grad_clip, step=step)
        if ema is not None:
            ema.update(model)
        step += 1
        if step % recipe.log_every == 0 or step == total_steps:
            ctx.log(stream=stream_id, step=step, loss=loss, lr_mult=mult.lr)
        if step in snapshots:
            tag = f"{tag_prefix}ep{ctx.epochs:07.3f}"
            ctx.save_snapshot(ema.model if ema is not None else model, tag, meta={"stream": stream_id, "step": step})
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
            if ema is not None:
                state["ema"] = ema.model.state_dict()
            checkpoint(state)
    return tag if tag is not None else ctx.snapshot_tags()[-1]


def train_naive_ensemble(ctx, recipe: Recipe, members: int, ema_decay: float) -> None:
    """N independent models (own seeds and data orders), E/N epochs each, averaged uniformly."""
    n = max(1, min(members, int(ctx.budget)))  # no member gets less than one epoch
    per_member = ctx.budget / n
    state = ctx.resume_state() or {}
    finals: list[str] = list(state.get("finals", []))
    for member in range(len(finals), n):
        resume = state.get("member_state") if state.get("member") == member else None

        def wrap(member_state, member=member):
            ctx.checkpoint({"finals": finals, "member": member, "member_state": member_state})

        finals.append(train_single(ctx, recipe, epochs=per_member,
                                   stream_id=f"member{member}", seed=ctx.seed * 1000 + member, tag_prefix=f"m{member}-",
                                   snapshot_every_epochs=0, ema_decay=ema_decay, resume=resume, on_checkpoint=wrap))
        ctx.checkpoint({"finals": finals, "member": member + 1, "member_state": None})
    ctx.set_ensemble({tag: 1.0 for tag in finals})


@dataclass(frozen=True)
class _Placement:
    """Where this process's trajectories run: rank group `index` of `n_groups`, DDP inside it when the
    group has several ranks. A one-process run is group 0 of 1 with no DDP."""

    index: int = 0
    n_groups: int = 1
    group: Any = None  # the context's RankGroup, in a distributed run

    @property
    def shard(self) -> tuple[int, int] | None:
        if self.group is None or self.group.size == 1:
            return None
        return (self.group.rank_in_group, self.group.size)

    @property
    def snapshot_args(self) -> dict:
        return {} if self.group is None else {"group": self.group}

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.shard is None:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, process_group=self.group.process_group)


def _trajectory_group(ctx, n_trajectories: int) -> _Placement:
    """Trajectories are independent, so they go to rank groups: with W ranks and N trajectories there are
    min(N, W) groups and trajectory t runs in group t mod groups."""
    world = getattr(ctx, "world_size", 1)
    if world <= 1:
        return _Placement()
    n_groups = min(n_trajectories, world)
    group = ctx.rank_groups(n_groups)
    return _Placement(group.index, n_groups, group)


@dataclass(frozen=True)
class Q0Settings:
    lr_floor: float = 0.08
    wd_floor: float = 0.7
    distill: DistillSpec = field(default_factory=DistillSpec)
    perturbation: PerturbationSchedule | None = None
    thresholds: PlannerThresholds = field(default_factory=PlannerThresholds)
    n_trajectories: int = 0  # 0: the planner decides
    cycle_epochs: float = 0.0  # 0: the planner decides

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> "Q0Settings":
        perturb = None
        if hp.get("perturb_start", 0.0) > 0:
            perturb = PerturbationSchedule(hp["perturb_start"], hp.get("perturb_end", 0.05))
        thresholds = PlannerThresholds(cycle_epochs=hp.get("cycle_epochs", 2.0) or 2.0,
                                       warmup_cycles=hp.get("warmup_cycles", 8))
        return cls(lr_floor=hp.get("lr_floor", 0.08), wd_floor=hp.get("wd_floor", 0.7),
                   distill=DistillSpec(hp.get("alpha", 0.45), hp.get("temperature", 1.2)), perturbation=perturb,
                   thresholds=thresholds, n_trajectories=hp.get("n_trajectories", 0))


def q0_plan(budget: float, settings: Q0Settings) -> Plan:
    """The planner's allocation, with the trajectory count overridden when the settings fix it."""
    base = plan(budget, settings.thresholds)
    if not settings.n_trajectories or base.mode == "packed" or settings.n_trajectories == base.n_trajectories:
        return base
    staircase = ((float("inf"), settings.n_trajectories),)
    return plan(budget, PlannerThresholds(**{**settings.thresholds.__dict__, "trajectory_staircase": staircase,
                                             "max_trajectories": settings.n_trajectories}))


def train_q0(ctx, recipe: Recipe, settings: Q0Settings, trajectories: list[int] | None = None) -> Plan:
    """Hyper-epoch pretraining: cyclic trajectories, a snapshot per cycle, chain distillation.

    Each trajectory runs the cyclic LR/anti-phase WD schedule; the optimizer state carries across cycles.
    After the warm-up cycles every cycle trains against the previous snapshot of the same trajectory as a
    frozen teacher. The final predictor is the harness's learned prior over all snapshots.
    In a distributed run the trajectories are spread over rank groups (DDP inside a group of several
    ranks); `trajectories` restricts by hand which ones this process trains.
    """
    allocation = q0_plan(ctx.budget, settings)
    group = _trajectory_group(ctx, allocation.n_trajectories)
    # a step of a trajectory is one batch on every rank of its group (DDP), all of it metered
    tokens_per_step = recipe.tokens_per_step(ctx) * (group.shard[1] if group.shard else 1)
    schedule = allocation.trajectory_schedule(ctx.epoch_tokens, tokens_per_step, lr_floor=settings.lr_floor,
                                              wd_floor=settings.wd_floor, warmup_steps=recipe.warmup_steps)
    ctx.log(event="plan", trajectories=allocation.n_trajectories, cycles=allocation.cycles_per_trajectory,
            cycle_epochs=allocation.cycle_epochs, warmup_cycles=allocation.warmup_cycles, mode=allocation.mode,
            steps_per_trajectory=schedule.total_steps)
    if trajectories is None:
        trajectories = [t for t in range(allocation.n_trajectories) if t % group.n_groups == group.index]
    state = ctx.resume_state() or {}
    todo = list(trajectories)
    done = set(state.get("done", []))
    total_steps = schedule.total_steps * allocation.n_trajectories
    for t in todo:
        if t in done:
            continue
        torch.manual_seed(ctx.seed * 1000 + t)
        model = recipe.model(ctx)
        optimizer = build_optimizer(model, recipe.optimizer)
        generator = seeded_generator(ctx.seed * 1000 + t + 7)
        teacher = None
        step = 0
        if state.get("trajectory") == t:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            step = state["step"]
            if state.get("teacher") is not None:
                teacher = recipe.model(ctx)
                teacher.load_state_dict(state["teacher"])
                teacher = frozen_teacher(teacher)
        student = group.wrap(model)
        stream = ctx.train_stream(f"trajectory{t}", recipe.batch_size, shard=group.shard)
        while step < schedule.total_steps:
            mult = schedule.at(step)
            set_multipliers(optimizer, mult.lr, mult.weight_decay)
            cycle = schedule.cycle_index(step)
            use_teacher = teacher is not None and cycle is not None and allocation.has_teacher(cycle)
            inputs, targets = next(stream)
            loss = train_step(student, optimizer, inputs, targets, teacher if use_teacher else None,
                              alpha=settings.distill.alpha, temperature=settings.distill.temperature,
                              max_grad_norm=recipe.grad_clip, step=step)
            is_end = schedule.is_cycle_end(step)
            step += 1
            if step % recipe.log_every == 0 or is_end:
                ctx.log(stream=f"trajectory{t}", step=step, loss=loss, lr_mult=mult.lr, wd_mult=mult.weight_decay,
                        distilled=use_teacher)
            if not is_end:
                continue
            ctx.save_snapshot(model, f"t{t}-c{cycle:03d}", meta={
                "trajectory": t, "cycle": cycle, "distilled": use_teacher, "step": step}, **group.snapshot_args)
            teacher = frozen_teacher(model)
            if settings.perturbation is not None and step < schedule.total_steps:
                progress = (t * schedule.total_steps + step) / total_steps
                perturb_weights(model, settings.perturbation.scale(progress), generator)
            ctx.checkpoint({"done": sorted(done), "trajectory": t, "step": step, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(), "teacher": teacher.state_dict(),
                            "generator": generator.get_state()})
        done.add(t)
        state = {}
        ctx.checkpoint({"done": sorted(done), "trajectory": None})
    ctx.set_ensemble("prior")
    return allocation
