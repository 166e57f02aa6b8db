"""Compute classes: the rules that make two timed results comparable, and the hardware a run used.

Slowrun ranks results within a class. Three classes are capped in training time on one node of eight
H100s (tiny 15 min, limited 1 h, two-hour 2 h); `unlimited` has no time cap but a bound on GPU-hours
(Slowrun's README: at most 64 H100s for 7 days); `cpu` is this harness's own class for small tracks on
ordinary machines, with no cap and no reference hardware.

Only training time counts against a cap, measured by the data server's clock: from the first real batch
served to the end of training. Compile warm-up on the harness's dummy batches (`ctx.warmup_batches`),
model construction before the first batch, and evaluation are outside it; wall time is recorded beside it.

A run is *ranked* in its class only when it kept the class's rules: it ran on the class's reference
hardware, under the class's own cap (a `--time-limit` of another length is for trying things out), and did
not train past the cap. Everything else is still recorded and shown, unranked, with the reasons; this
module writes those reasons, and the board only displays them.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import SlowrunError

#: Seconds after the cap in which a snapshot still counts: the time to write the weights of the model as it
#: stood at the cap (a method that keeps training after TimeExhausted saves later than this, and is refused).
SNAPSHOT_GRACE_MIN_S = 5.0
SNAPSHOT_GRACE_FRACTION = 0.01


class ComputeClassError(SlowrunError):
    """An unknown compute class, or a time limit that makes no sense."""


@dataclass(frozen=True)
class Hardware:
    """What a run trained on: the accelerator model (None on CPU), accelerators per node, nodes."""

    gpu_model: str | None
    gpus_per_node: int
    nodes: int

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    def describe(self) -> str:
        if not self.gpu_model or not self.gpus:
            return f"CPU ({self.nodes} node{'s' if self.nodes != 1 else ''})"
        nodes = f" x {self.nodes} nodes" if self.nodes != 1 else ""
        return f"{self.gpus_per_node}x {self.gpu_model}{nodes}"

    def gpu_hours(self, train_s: float) -> float | None:
        return train_s / 3600.0 * self.gpus if self.gpu_model and self.gpus else None

    def to_dict(self, train_s: float) -> dict:
        return {"gpu_model": self.gpu_model, "gpus_per_node": self.gpus_per_node, "nodes": self.nodes,
                "gpu_hours": self.gpu_hours(train_s)}


@dataclass(frozen=True)
class ComputeClass:
    name: str
    description: str
    time_limit_s: float | None  # cap on training time (None: no cap)
    gpu_hours_limit: float | None = None  # cap on GPU-hours of training (unlimited)
    gpu_model: str | None = None  # substring the accelerator's name must contain ("H100"); None: any / CPU
    gpus_per_node: int | None = None  # None: any number
    max_nodes: int | None = None
    cpu_only: bool = False

    def reference(self) -> str:
        if self.cpu_only:
            return "CPU only"
        if self.gpu_model is None:
            return "any hardware"
        count = f"{self.gpus_per_node}x " if self.gpus_per_node else ""
        nodes = (" on one node" if self.max_nodes == 1 else f" on at most {self.max_nodes} nodes"
                 if self.max_nodes else "")
        return f"{count}{self.gpu_model}{nodes}"

    def effective_time_limit(self, hardware: Hardware) -> float | None:
        """The cap on training seconds for this hardware: the class's own, or its GPU-hours bound spread
        over the accelerators the run has."""
        if self.time_limit_s is not None:
            return self.time_limit_s
        if self.gpu_hours_limit is not None and hardware.gpus:
            return self.gpu_hours_limit * 3600.0 / hardware.gpus
        return None

    def hardware_problems(self, hardware: Hardware) -> list[str]:
        """Why `hardware` is not this class's reference hardware (empty when it is)."""
        if self.cpu_only:
            return [f"the {self.name} class runs on CPUs; this run used {hardware.describe()}"] if hardware.gpus else []
        problems = []
        if self.gpu_model and (not hardware.gpu_model or self.gpu_model.lower() not in hardware.gpu_model.lower()):
            problems.append(f"hardware {hardware.describe()} is not the {self.name} class's reference "
                            f"{self.reference()}")
        elif self.gpus_per_node and hardware.gpus_per_node != self.gpus_per_node:
            problems.append(f"{hardware.gpus_per_node} GPU(s) per node, the {self.name} class's reference is "
                            f"{self.reference()}")
        if self.max_nodes and hardware.nodes > self.max_nodes:
            problems.append(f"{hardware.nodes} nodes, the {self.name} class allows at most {self.max_nodes}")
        return problems


_H100 = "H100"

COMPUTE_CLASSES: dict[str, ComputeClass] = {c.name: c for c in (
    ComputeClass("tiny", "15 minutes of training on one 8xH100 node", 15 * 60.0, gpu_model=_H100,
                 gpus_per_node=8, max_nodes=1),
    ComputeClass("limited", "1 hour of training on one 8xH100 node", 60 * 60.0, gpu_model=_H100,
                 gpus_per_node=8, max_nodes=1),
    ComputeClass("two-hour", "2 hours of training on one 8xH100 node", 120 * 60.0, gpu_model=_H100,
                 gpus_per_node=8, max_nodes=1),
    ComputeClass("unlimited", "no time cap; at most 64 H100s for 7 days (10,752 GPU-hours)", None,
                 gpu_hours_limit=64 * 7 * 24.0, gpu_model=_H100, max_nodes=8),
    ComputeClass("cpu", "small tracks on CPUs, no time cap", None, cpu_only=True),
)}


def get_compute_class(name: str) -> ComputeClass:
    try:
        return COMPUTE_CLASSES[name]
    except KeyError:
        raise ComputeClassError(f"compute class {name!r} is unknown; use one of "
                                f"{', '.join(COMPUTE_CLASSES)}") from None


def default_compute_class(device: str, allowed: tuple[str, ...] = ()) -> str:
    """`cpu` for a CPU run and `unlimited` otherwise, when the track allows it; else its first class."""
    preferred = "cpu" if device == "cpu" else "unlimited"
    if not allowed or preferred in allowed:
        return preferred
    return "unlimited" if "unlimited" in allowed else allowed[0]


def hardware_of(device: str, gpus_per_node: int, nodes: int, gpu_name: str | None) -> Hardware:
    """The run's hardware from its device, its processes per node and the accelerator's name."""
    if device.startswith("cuda") and gpu_name:
        return Hardware(gpu_model=gpu_name, gpus_per_node=gpus_per_node, nodes=nodes)
    return Hardware(gpu_model=None, gpus_per_node=0, nodes=nodes)


def snapshot_grace_s(time_limit_s: float) -> float:
    return max(SNAPSHOT_GRACE_MIN_S, SNAPSHOT_GRACE_FRACTION * time_limit_s)


def check_time_limit(value: float | None) -> float | None:
    if value is None:
        return None
    if not (value > 0) or value != value:
        raise ComputeClassError(f"--time-limit must be a positive number of seconds, got {value}")
    return float(value)


def unranked_reasons(klass: ComputeClass, hardware: Hardware, time_limit_s: float | None, train_s: float,
                     over_cap_s: float | None) -> list[str]:
    """Why a run cannot be ranked in its class (empty: it can), whatever its status (the board ranks only
    status ok anyway). `over_cap_s` is how far training went past the cap when the server stopped it or
    refused a late snapshot (None: it stayed within)."""
    reasons = list(klass.hardware_problems(hardware))
    own = klass.effective_time_limit(hardware)
    if time_limit_s is not None and (own is None or abs(time_limit_s - own) > 1e-6):
        reasons.append(f"trained under a {_minutes(time_limit_s)} time limit, not the {klass.name} class's "
                       + (f"{_minutes(own)} cap" if own is not None else "rules (no cap)"))
    if over_cap_s is not None and time_limit_s is not None:
        reasons.append(f"trained {_minutes(train_s)}, past the {_minutes(time_limit_s)} cap")
    if klass.gpu_hours_limit is not None:
        used = hardware.gpu_hours(train_s)
        if used is not None and used > klass.gpu_hours_limit:
            reasons.append(f"used {used:,.0f} GPU-hours, over the {klass.name} class's {klass.gpu_hours_limit:,.0f}")
    return reasons


def _minutes(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"
