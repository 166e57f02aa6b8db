"""Optional weight perturbation at cycle boundaries.

At the start of a cycle every floating-point weight tensor W gets W += s * std(W) * N(0, 1), where the
relative scale s falls by a half cosine from ``start`` (0.25) at the beginning of the run to ``end``
(0.05) at its end. Early on, a large kick pushes successive snapshots of a trajectory further apart (more
diversity for the ensemble); late in the run the snapshots are good and only need a nudge. Scaling by
each tensor's own std makes the kick the same relative size for embeddings and hidden matrices alike.
The noise comes from a caller-seeded generator, so a run is reproducible and does not disturb torch's
global RNG.

What "the run" is differs between q0 and PR #90. q0's reference measures progress over all trajectories
as if they ran one after the other (trajectory t of N spans progress [t/N, (t+1)/N]), so later
trajectories get smaller kicks. PR #90 trains its trajectories side by side, and each one's progress is
its own: the perturbation after cycle c of n (0-based; there is none after the last) is at progress
c / (n - 2), from ``start`` after the first cycle to ``end`` before the last (:func:`cycle_progress`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from q0_reference.errors import Q0ConfigError


@dataclass(frozen=True)
class PerturbationSchedule:
    start: float = 0.25
    end: float = 0.05

    def __post_init__(self):
        if not (self.start >= 0 and self.end >= 0):
            raise Q0ConfigError(f"perturbation scales must be >= 0, got start={self.start!r}, end={self.end!r}")

    def scale(self, progress: float) -> float:
        """Relative noise scale at ``progress`` in [0, 1] through the run."""
        if not 0.0 <= progress <= 1.0:
            raise Q0ConfigError(f"run progress must be in [0, 1], got {progress!r}")
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def perturb_weights(model: nn.Module, scale: float, generator: torch.Generator) -> None:
    """Add N(0, (scale * std(W))^2) noise to every floating-point parameter W with at least 2 elements.

    The noise is drawn where ``generator`` lives, which should be the weights' device (see
    :func:`seeded_generator`): drawn on one host thread, the 1.72B preset's noise took about 10 s a cycle.
    The std stays on the device too, so perturbing never waits for the device."""
    if not scale >= 0:
        raise Q0ConfigError(f"perturbation scale must be >= 0, got {scale!r}")
    if scale == 0:
        return
    for param in model.parameters():
        if not param.is_floating_point() or param.numel() < 2:
            continue
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32, device=generator.device)
        noise = noise.to(param.device)
        param.add_((noise * (param.float().std() * scale)).to(param.dtype))


def seeded_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on ``device`` (the host's for the meta device, which has none), seeded. Its state is a
    host tensor whatever the device, so checkpoints keep it alike."""
    device = torch.device(device)
    generator = torch.Generator(device="cpu" if device.type == "meta" else device)
    generator.manual_seed(seed)
    return generator


def cycle_progress(cycle: int, n_cycles: int) -> float:
    """Progress of the perturbation that follows cycle ``cycle`` (0-based) of a trajectory of ``n_cycles``
    in PR #90's per-trajectory schedule: 0 after the first cycle, 1 after the next-to-last."""
    if not 0 <= cycle < n_cycles:
        raise Q0ConfigError(f"cycle {cycle} is outside a trajectory of {n_cycles} cycles")
    return min(1.0, cycle / max(1, n_cycles - 2))
