"""Chain distillation: each snapshot's successor learns from the data and from its predecessor.

    loss = (1 - alpha) * CE(student, targets) + alpha * T^2 * KL(p_teacher,T || p_student,T)

with p_T = softmax(logits / T) and KL(p || q) = sum_v p_v (log p_v - log q_v), averaged over tokens.
The temperature softens both distributions so the student also learns the teacher's ranking of unlikely
tokens; the T^2 factor keeps the KL term's gradient on the same scale as the cross-entropy's as T varies.
The teacher is the frozen previous snapshot of the same trajectory: in eval mode (no dropout), without
gradients, so its forward costs compute but never changes it. :class:`Teacher` keeps one such copy for a
whole trajectory and refreshes it in place at every cycle end.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from q0_reference.errors import Q0ConfigError


@dataclass(frozen=True)
class DistillSpec:
    alpha: float = 0.45
    temperature: float = 1.2

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise Q0ConfigError(f"distillation alpha must be in [0, 1], got {self.alpha!r}")
        if not self.temperature > 0:
            raise Q0ConfigError(f"distillation temperature must be positive, got {self.temperature!r}")


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is in a narrower type (bf16 logits); float32 and float64 pass unchanged, so
    softmax and its gradient never run in bf16, and a float64 check stays float64 end to end."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def tempered_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over tokens of KL(softmax(teacher/T) || softmax(student/T)); exactly 0 when the logits agree."""
    log_p = F.log_softmax(at_least_float32(teacher_logits) / temperature, dim=-1)
    log_q = F.log_softmax(at_least_float32(student_logits) / temperature, dim=-1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return per_token.mean()


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats for logits [..., V] and targets [...]."""
    return F.cross_entropy(at_least_float32(logits).reshape(-1, logits.size(-1)), targets.reshape(-1))


class _FusedDistillationLoss(torch.autograd.Function):
    """The mixed loss and its gradient in one pass over the logits.

    The gradient with respect to the student logits z has a closed form,

        d loss / d z = [(1 - alpha) * (softmax(z) - onehot(y)) + alpha * T * (softmax(z/T) - p_T)] / N,

    so it is computed in the forward (in place, on buffers the forward needs anyway) and the backward is one
    multiplication. Letting autograd differentiate the composed expression instead walks the full
    [tokens, vocab] tensors many more times, and on a CPU those passes are a visible share of a step.
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, targets, alpha, temperature):
        # Written to reuse buffers: on a CPU, fresh [tokens, vocab] allocations cost more than the arithmetic.
        z = at_least_float32(student_logits.detach()).reshape(-1, student_logits.size(-1))
        y = targets.reshape(-1)
        n = z.size(0)
        inv_t = 1.0 / temperature
        scratch = z * inv_t
        log_q = F.log_softmax(scratch, dim=-1)
        p = teacher_logits.detach().to(z.dtype).reshape(z.shape) * inv_t
        log_p = F.log_softmax(p, dim=-1)
        torch.exp(log_p, out=p)
        torch.sub(log_p, log_q, out=scratch)
        # sum_v p (log p - log q): identical logits give identical log_p and log_q, hence exactly 0.
        kl = torch.dot(p.view(-1), scratch.view(-1)) / n
        grad = F.log_softmax(z, dim=-1)
        ce = -grad.gather(1, y[:, None]).sum() / n
        grad.exp_().mul_(1.0 - alpha)
        grad[torch.arange(n, device=grad.device), y] -= 1.0 - alpha
        grad.add_(log_q.exp_().sub_(p), alpha=alpha * temperature).div_(n)
        ctx.save_for_backward(grad)
        ctx.input_shape, ctx.input_dtype = student_logits.shape, student_logits.dtype
        return (1.0 - alpha) * ce + alpha * temperature ** 2 * kl

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        grad_input = (grad * grad_output).reshape(ctx.input_shape).to(ctx.input_dtype)
        return grad_input, None, None, None, None


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      alpha: float = 0.45, temperature: float = 1.2) -> torch.Tensor:
    """(1 - alpha) * CE(student, targets) + alpha * T^2 * KL(teacher_T || student_T), per-token mean.
    Gradients flow to the student logits only."""
    if student_logits.shape != teacher_logits.shape:
        raise Q0ConfigError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                            f"{tuple(teacher_logits.shape)} differ in shape; do they share a vocabulary?")
    if targets.shape != student_logits.shape[:-1]:
        raise Q0ConfigError(f"targets {tuple(targets.shape)} do not match logits {tuple(student_logits.shape)}")
    DistillSpec(alpha, temperature)  # validates
    if alpha == 0.0:
        return cross_entropy(student_logits, targets)
    return _FusedDistillationLoss.apply(student_logits, teacher_logits, targets, float(alpha), float(temperature))


def frozen_teacher(model: nn.Module) -> nn.Module:
    """An independent copy of ``model`` that cannot train: eval mode, no gradients."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


class Teacher:
    """The predecessor snapshot a cycle distils from, as one frozen model kept for a whole trajectory.

    At each cycle end :meth:`load_from` copies the student's weights into it in place (cast to the
    teacher's dtype), so its memory is allocated once and a compiled forward is compiled once. It runs in
    eval mode under inference mode: no dropout, no autograd records, no gradients.

    ``dtype`` bf16 (the GPU setting) halves the teacher's memory and speeds its forward; the student still
    learns from float32 logits, since the model returns its logits in float32. ``dtype=None`` keeps the
    student's float32 weights: the teacher then computes exactly what a deep copy of the student would.
    The teacher is built on the meta device and given storage directly in its own dtype, so a bf16
    teacher of a 1.8B model never exists in float32.
    """

    def __init__(self, student: nn.Module, *, dtype: torch.dtype | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 compile_fn: Callable = lambda fn: fn):
        device = next(student.parameters()).device
        with torch.device("meta"):
            module = type(student)(student.config)
        if dtype is not None:  # the weights only: the rotary tables stay float32, as in the student
            for param in module.parameters():
                param.data = param.data.to(dtype)
        module.to_empty(device=device)
        module.eval()
        module.requires_grad_(False)
        self.module = module
        self.dtype = dtype
        self._autocast = autocast
        self._forward = compile_fn(module)
        self.load_from(student)

    @torch.no_grad()
    def load_from(self, student: nn.Module) -> None:
        """Make the teacher a copy of ``student``'s current weights (and buffers)."""
        for mine, theirs in zip(self.module.parameters(), student.parameters()):
            mine.copy_(theirs)
        for mine, theirs in zip(self.module.buffers(), student.buffers()):
            mine.copy_(theirs)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self._autocast():
            return self._forward(inputs)

    def parameters(self):
        return self.module.parameters()

    def state_dict(self):
        return self.module.state_dict()
