"""Optimizers for the GPT, with learning rate and weight decay driven by schedule multipliers.

Parameters fall into three roles: the input embedding, the output head, and the hidden matrices inside
the blocks. With ``kind="adamw"`` all three use AdamW; with ``kind="muon"`` the hidden matrices use
Muon (orthogonalised momentum, which only makes sense for 2-D weights whose rows and columns are both
feature spaces; :class:`q0_reference.muon.BatchedMuon`, torch's update batched over same-shape matrices)
and the embedding and head stay on AdamW, because their rows are token lookups rather than a linear map to
orthogonalise. Any tensor with fewer than two dimensions would also go to AdamW, without weight decay.

AdamW runs its fused kernel on CUDA (one launch for every tensor) and the multi-tensor ``foreach`` path
elsewhere, which on a CPU gives bit for bit the results of the plain per-tensor loop.

Each param group remembers its ``base_lr`` and ``base_weight_decay``; a schedule then sets
``lr = base_lr * lr_mult`` and ``weight_decay = base_weight_decay * wd_mult`` on every group at every
step, so one pair of numbers moves both optimizers together. Both torch optimizers decay decoupled from
the gradient as ``w *= 1 - lr * weight_decay``, so the decay actually applied per step is the product of
the two multipliers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn

from q0_reference.errors import Q0ConfigError
from q0_reference.muon import BatchedMuon

OPTIMIZER_KINDS = ("adamw", "muon")


@dataclass(frozen=True)
class OptimizerSpec:
    """Base hyperparameters; the schedule scales ``lr``s and ``weight_decay`` from these.

    ``lr`` is the AdamW rate for whatever AdamW handles (everything, or embedding and head under Muon);
    ``embedding_lr`` / ``head_lr`` override it for those roles. ``matrix_lr`` is Muon's rate for hidden
    matrices (ignored by ``adamw``). ``weight_decay`` applies to every matrix of every role.
    """

    kind: str = "adamw"
    lr: float = 3e-3
    embedding_lr: float | None = None
    head_lr: float | None = None
    matrix_lr: float = 0.02
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    momentum: float = 0.95
    nesterov: bool = True

    def __post_init__(self):
        if self.kind not in OPTIMIZER_KINDS:
            raise Q0ConfigError(f"optimizer kind must be one of {', '.join(OPTIMIZER_KINDS)}, got {self.kind!r}")
        for name in ("lr", "matrix_lr", "weight_decay", "eps", "embedding_lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise Q0ConfigError(f"OptimizerSpec.{name} must be >= 0, got {value!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise Q0ConfigError(f"OptimizerSpec.betas must be two numbers in [0, 1), got {self.betas!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise Q0ConfigError(f"OptimizerSpec.momentum must be in [0, 1), got {self.momentum!r}")
        object.__setattr__(self, "betas", tuple(self.betas))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "OptimizerSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise Q0ConfigError(f"unknown optimizer settings {unknown}; known settings are {sorted(known)}")
        return cls(**values)


class GPTOptimizer:
    """One optimizer over one or two torch optimizers, stepped and zeroed together.

    ``param_groups`` lists every group of every inner optimizer, each tagged with ``role`` and carrying
    ``base_lr`` / ``base_weight_decay``, so schedules and logging need not know how many there are.
    """

    def __init__(self, optimizers: Iterable[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        states = state.get("optimizers", [])
        if len(states) != len(self.optimizers):
            raise Q0ConfigError(f"optimizer state holds {len(states)} optimizers but this optimizer has "
                                f"{len(self.optimizers)}; was it saved with a different optimizer kind?")
        for opt, opt_state in zip(self.optimizers, states):
            opt.load_state_dict(opt_state)


def parameter_roles(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Split trainable parameters into ``embedding``, ``head``, ``matrix`` (2-D, inside blocks) and
    ``vector`` (anything else), by module: the GPT's ``wte`` and ``lm_head``."""
    roles: dict[str, list[tuple[str, nn.Parameter]]] = {"embedding": [], "head": [], "matrix": [], "vector": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("wte."):
            roles["embedding"].append((name, param))
        elif name.startswith("lm_head."):
            roles["head"].append((name, param))
        elif param.dim() == 2:
            roles["matrix"].append((name, param))
        else:
            roles["vector"].append((name, param))
    return roles


def _adamw_kernel(params: list[nn.Parameter]) -> dict[str, bool]:
    device_types = {p.device.type for p in params}
    if device_types == {"cuda"}:
        return {"fused": True}
    if device_types <= {"cpu"}:
        return {"foreach": True}
    return {}  # meta and other devices: torch's default path


def build_optimizer(model: nn.Module, spec: OptimizerSpec = OptimizerSpec(), *, process_group=None) -> GPTOptimizer:
    """AdamW (and Muon) over ``model``'s parameters, wherever they live. With ``process_group`` (the ranks
    of the model's DDP group) Muon divides its orthogonalisation among them."""
    roles = parameter_roles(model)
    if not any(roles.values()):
        raise Q0ConfigError("the model has no trainable parameters to optimise")
    adam_lr = {"embedding": spec.embedding_lr if spec.embedding_lr is not None else spec.lr,
               "head": spec.head_lr if spec.head_lr is not None else spec.lr,
               "matrix": spec.lr, "vector": spec.lr}
    adam_roles = ("embedding", "head", "vector") if spec.kind == "muon" else ("embedding", "head", "matrix", "vector")

    def group(role: str, lr: float, weight_decay: float) -> dict[str, Any]:
        return {"params": [p for _, p in roles[role]], "role": role, "lr": lr, "weight_decay": weight_decay,
                "base_lr": lr, "base_weight_decay": weight_decay}

    adam_groups = [group(role, adam_lr[role], 0.0 if role == "vector" else spec.weight_decay)
                   for role in adam_roles if roles[role]]
    optimizers: list[torch.optim.Optimizer] = []
    if adam_groups:
        kernel = _adamw_kernel([p for g in adam_groups for p in g["params"]])
        optimizers.append(torch.optim.AdamW(adam_groups, betas=spec.betas, eps=spec.eps, **kernel))
    if spec.kind == "muon" and roles["matrix"]:
        optimizers.append(BatchedMuon([group("matrix", spec.matrix_lr, spec.weight_decay)],
                                      momentum=spec.momentum, nesterov=spec.nesterov, process_group=process_group))
    return GPTOptimizer(optimizers)


def set_multipliers(optimizer: GPTOptimizer | torch.optim.Optimizer, lr_mult: float, wd_mult: float = 1.0) -> None:
    """Set every group's lr and weight decay to its base value times the given multipliers."""
    if not (lr_mult >= 0 and wd_mult >= 0):
        raise Q0ConfigError(f"schedule multipliers must be >= 0, got lr_mult={lr_mult!r}, wd_mult={wd_mult!r}")
    for group in optimizer.param_groups:
        if "base_lr" not in group:
            raise Q0ConfigError("param group has no base_lr; build the optimizer with q0_reference.optim.build_optimizer")
        group["lr"] = group["base_lr"] * lr_mult
        group["weight_decay"] = group["base_weight_decay"] * wd_mult
