"""The single-model baseline: one GPT, one stream, warm-up then cosine decay over the whole budget.

Snapshots every `snapshot_every_epochs` (and at the end) give the harness a curve of validation loss
against epochs; the last snapshot is the predictor. A checkpoint beside each snapshot makes the run
resumable with bitwise-identical losses on CPU.
"""

from __future__ import annotations

import math

import torch

from q0_reference.model import GPT, GPTConfig
from q0_reference.optim import OptimizerSpec, build_optimizer, set_multipliers
from q0_reference.schedule import WarmupDecaySchedule, steps_for_epochs
from q0_reference.trainer import train_step


def build_model(ctx) -> GPT:
    hp = ctx.hparams
    config = GPTConfig(vocab_size=ctx.vocab_size, seq_len=ctx.seq_len, n_layer=hp["n_layer"], n_head=hp["n_head"],
                       d_model=hp["d_model"], mlp=hp["mlp"])
    return GPT(config)


def snapshot_steps(total_steps: int, steps_per_epoch: float, every_epochs: float) -> list[int]:
    """Steps after which to snapshot: every `every_epochs` epochs, and always after the last step."""
    steps = set()
    k = 1
    while True:
        step = int(round(k * every_epochs * steps_per_epoch))
        if step >= total_steps:
            break
        steps.add(step)
        k += 1
    steps.add(total_steps)
    return sorted(steps)


def main(ctx) -> None:
    hp = ctx.hparams
    torch.manual_seed(ctx.seed)
    model = build_model(ctx)
    optimizer = build_optimizer(model, OptimizerSpec(kind=hp["optimizer"], lr=hp["lr"], matrix_lr=hp["matrix_lr"],
                                                     weight_decay=hp["weight_decay"]))
    tokens_per_step = hp["batch_size"] * ctx.seq_len
    total_steps = steps_for_epochs(ctx.budget, ctx.epoch_tokens, tokens_per_step)
    schedule = WarmupDecaySchedule(total_steps, warmup_steps=min(hp["warmup_steps"], total_steps - 1),
                                   final_lr_mult=hp["final_lr_mult"])
    steps_per_epoch = ctx.epoch_tokens / tokens_per_step
    snapshots = snapshot_steps(total_steps, steps_per_epoch, hp["snapshot_every_epochs"])

    step = 0
    state = ctx.resume_state()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]

    stream = ctx.train_stream("main", hp["batch_size"])
    while step < total_steps:
        multipliers = schedule.at(step)
        set_multipliers(optimizer, multipliers.lr, multipliers.weight_decay)
        inputs, targets = next(stream)
        loss = train_step(model, optimizer, inputs, targets, max_grad_norm=hp["grad_clip"], step=step)
        step += 1
        if step % hp["log_every"] == 0 or step == total_steps:
            ctx.log(step=step, loss=loss, lr_mult=multipliers.lr)
        if step in snapshots:
            epoch = ctx.epochs
            ctx.save_snapshot(model, f"ep{epoch:07.3f}", meta={"step": step, "lr_mult": multipliers.lr})
            ctx.checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step})
    if not math.isclose(ctx.epochs, ctx.budget, rel_tol=0.02):
        ctx.log(note=f"trained {ctx.epochs:.4f} of {ctx.budget} epochs (whole steps of {tokens_per_step} tokens)")
