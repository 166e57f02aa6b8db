"""One training step, with or without a teacher, independent of where the batches come from.

A step is one optimizer update over one or more microbatches (gradient accumulation, see
:mod:`q0_reference.batching`): each microbatch's loss is scaled by 1/n before ``backward`` so the
accumulated gradient is the gradient of the mean loss over the whole batch, exactly as one forward over
all of it would give. Under DDP the gradient all-reduce is skipped (``no_sync``) on all but the last
microbatch, so a step communicates once, however many microbatches it takes.

The step refuses to apply a non-finite loss: it raises before the optimizer step, so the weights and
optimizer state stay as they were and the caller can save them or report the failure. That check is the
step's only read from the device (one per step, after the last backward, whatever the accumulation). On the meta device a step is a dry run: every tensor has a shape
and a device but no value, so the loss it returns is NaN and is not checked.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

import torch
import torch.nn as nn

from q0_reference.batching import check_batches
from q0_reference.distill import cross_entropy, distillation_loss
from q0_reference.errors import NonFiniteLossError, Q0ConfigError


def check_finite_loss(loss: float, step: int | None = None) -> float:
    if not math.isfinite(loss):
        where = f" at step {step}" if step is not None else ""
        raise NonFiniteLossError(f"training loss is {loss}{where}; the update was not applied. Lower the learning "
                                 f"rate, add warm-up or gradient clipping, or check the batch for bad token ids.")
    return loss


def _checked_value(loss: torch.Tensor, step: int | None) -> float:
    if loss.device.type == "meta":
        return math.nan
    return check_finite_loss(loss.item(), step)


def _ddp_of(model: nn.Module):
    """The DistributedDataParallel wrapper inside ``model`` (which may also be compiled), or None."""
    from torch.nn.parallel import DistributedDataParallel

    inner = getattr(model, "_orig_mod", model)
    return inner if isinstance(inner, DistributedDataParallel) else None


def teacher_logits(teacher, inputs: torch.Tensor) -> torch.Tensor:
    """Logits of a frozen teacher: a callable (q0_reference.distill.Teacher) or a plain module, which is
    put in eval mode (a teacher never uses dropout, whoever built it) and run without autograd."""
    if isinstance(teacher, nn.Module):
        teacher.eval()
        with torch.inference_mode():
            return teacher(inputs)
    return teacher(inputs)


def accumulated_step(model: nn.Module, optimizer, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     teacher=None, *, alpha: float = 0.45, temperature: float = 1.2,
                     max_grad_norm: float | None = 1.0, step: int | None = None,
                     autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> float:
    """Forward and backward over every microbatch, then clip and update once. Returns the loss that was
    optimised (the distillation mix when a teacher is given, else the plain cross-entropy), averaged over
    the microbatches. ``model`` may be wrapped in DDP and/or compiled; ``autocast`` gives the forward's
    mixed-precision context."""
    check_batches(batches)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    n = len(batches)
    ddp = _ddp_of(model)
    losses = []
    mtp_weight = _mtp_weight(model)
    for i, (inputs, targets) in enumerate(batches):
        sync = ddp.no_sync() if ddp is not None and i < n - 1 else contextlib.nullcontext()
        with sync:
            with autocast():
                if mtp_weight:
                    logits, mtp_loss = model(inputs, targets)
                else:
                    logits = model(inputs)
                guide = None if teacher is None else teacher_logits(teacher, inputs)
            if guide is None:
                loss = cross_entropy(logits, targets)
            else:
                loss = distillation_loss(logits, guide, targets, alpha=alpha, temperature=temperature)
            if mtp_weight:  # on the label side of the distillation mix, as PR #90 folds it in
                loss = loss + (1.0 if guide is None else 1.0 - alpha) * mtp_weight * mtp_loss
            losses.append(loss.detach())
            (loss / n if n > 1 else loss).backward()
    # The one host read of the step, after every backward is queued and before the update: on a GPU the
    # host waits here once per step, for work already in flight (a read before the backward left the GPU
    # idle while the host queued it). A non-finite loss has by now written only gradients, which the next
    # step's zero_grad discards; the weights and optimizer state are untouched.
    value = _checked_value(losses[0] if n == 1 else torch.stack(losses).mean(), step)
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return value


def _mtp_weight(model: nn.Module) -> float:
    """The weight of the model's multi-token-prediction loss (0: it has no MTP head), through DDP and
    torch.compile wrappers."""
    base = model
    for attribute in ("module", "_orig_mod", "module", "_orig_mod"):
        base = getattr(base, attribute, base)
    config = getattr(base, "config", None)
    return float(config.mtp_weight) if getattr(config, "mtp_head", False) else 0.0


def train_step(model: nn.Module, optimizer, inputs: torch.Tensor, targets: torch.Tensor,
               teacher=None, *, alpha: float = 0.45, temperature: float = 1.2,
               max_grad_norm: float | None = 1.0, step: int | None = None) -> float:
    """Forward, loss, backward, clip, update on one batch (one microbatch of :func:`accumulated_step`)."""
    if inputs.shape != targets.shape:
        raise Q0ConfigError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must have the same shape")
    return accumulated_step(model, optimizer, [(inputs, targets)], teacher, alpha=alpha, temperature=temperature,
                            max_grad_norm=max_grad_norm, step=step)


@torch.no_grad()
def evaluate_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cross-entropy (nats/token) in eval mode, restoring the model's previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        return cross_entropy(model(inputs), targets).item()
    finally:
        model.train(was_training)
