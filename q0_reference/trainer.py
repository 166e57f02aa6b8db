"""One training step, with or without a teacher, independent of where the batches come from.

The step refuses to apply a non-finite loss: it raises before ``backward``/``step``, so the weights and
optimizer state stay as they were and the caller can save them or report the failure.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from q0_reference.distill import cross_entropy, distillation_loss
from q0_reference.errors import NonFiniteLossError, Q0ConfigError


def check_finite_loss(loss: float, step: int | None = None) -> float:
    if not math.isfinite(loss):
        where = f" at step {step}" if step is not None else ""
        raise NonFiniteLossError(f"training loss is {loss}{where}; the update was not applied. Lower the learning "
                                 f"rate, add warm-up or gradient clipping, or check the batch for bad token ids.")
    return loss


def train_step(model: nn.Module, optimizer, inputs: torch.Tensor, targets: torch.Tensor,
               teacher: nn.Module | None = None, *, alpha: float = 0.45, temperature: float = 1.2,
               max_grad_norm: float | None = 1.0, step: int | None = None) -> float:
    """Forward, loss, backward, clip, update. Returns the loss that was optimised (the distillation mix
    when a teacher is given, else the plain cross-entropy)."""
    if inputs.shape != targets.shape:
        raise Q0ConfigError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must have the same shape")
    model.train()
    optimizer.zero_grad(set_to_none=True)
    logits = model(inputs)
    if teacher is None:
        loss = cross_entropy(logits, targets)
    else:
        teacher.eval()  # a teacher never uses dropout, whoever built it
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        loss = distillation_loss(logits, teacher_logits, targets, alpha=alpha, temperature=temperature)
    value = check_finite_loss(loss.item(), step)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return value


@torch.no_grad()
def evaluate_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cross-entropy (nats/token) in eval mode, restoring the model's previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        return cross_entropy(model(inputs), targets).item()
    finally:
        model.train(was_training)
