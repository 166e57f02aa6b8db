"""How long evaluation may take: a limit per snapshot from a stated rule, and an optional limit on the whole.

A method's model runs in the evaluation worker, so a model that sleeps in its forward holds the
evaluation for as long as the harness lets it. A fixed limit per snapshot is either too tight for the
largest honest models or far too loose for the small ones (it was 6 hours for every snapshot, and a run
may hand over thousands). The limit is instead computed from what the snapshot asks to be run:

    limit = START_S + FLOPS_PER_PARAM_TOKEN * parameters * tokens / FLOOR_FLOPS[device kind]

`parameters` is counted from the snapshot's safetensors header (every tensor's element count; embeddings
included, which is how the logits' matmul is counted), `tokens` is what the evaluation scores with it
(fitness and validation windows, plus PROBE_SHARE for the probes' re-scoring). Four FLOPs per parameter
and token is twice a forward's matmuls: attention's score and value products and everything that is not a
matmul fit in the second half at the sizes Slowrun runs (about 11% for PR #90's 1.8B model at 2,048
tokens). The floors are far below what the hardware does, so an honest model never meets its limit:
a 2-core CPU does 30 to 100 GFLOP/s in float32 (floor: 1), an H100 about 400 TFLOP/s in bf16 and 50 in
float32 (floor: 10). For PR #90's model on fineweb that is 2.4 hours a snapshot against 7 to 12 minutes
measured for the socket path, and START_S (10 minutes) covers start-up, building, a first compile and
the probes of small models.

`--eval-timeout` bounds the whole evaluation besides: each snapshot's limit is cut to what is left, and a
snapshot whose turn comes after it has passed is listed as not scored, with that reason.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from harness.formats.safetensors_header import SafetensorsError, header_of_buffer

START_S = 600.0
FLOPS_PER_PARAM_TOKEN = 4.0
FLOOR_FLOPS = {"cpu": 1e9, "cuda": 1e13}
PROBE_SHARE = 0.25  # the probes re-score a few batches; a quarter more tokens is well above what they take


def parameter_count(weights: bytes) -> int:
    """Elements in a safetensors file, from its header. A header that cannot be read counts one element per
    byte (more than any real dtype holds): the worker refuses such a file anyway, and the limit must not
    be what fails it first."""
    try:
        return header_of_buffer(weights).elements
    except SafetensorsError:
        return len(weights)


def device_kind(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


def snapshot_limit_s(parameters: int, tokens: int, device: str) -> float:
    """The rule above, in seconds."""
    work = FLOPS_PER_PARAM_TOKEN * parameters * tokens * (1.0 + PROBE_SHARE)
    return START_S + work / FLOOR_FLOPS[device_kind(device)]


@dataclass(frozen=True)
class EvalLimits:
    """The evaluation's time limits. `per_snapshot_s` fixes every snapshot's limit (None: the rule);
    `total_s` bounds the whole evaluation (None: only the per-snapshot limits, so the whole is bounded
    by them and the run's `--max-snapshots`)."""

    per_snapshot_s: float | None = None
    total_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("per_snapshot_s", "total_s"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"an evaluation time limit must be a positive number of seconds, got {name}={value!r}")

    def start(self) -> "EvalClock":
        return EvalClock(self, None if self.total_s is None else time.monotonic() + self.total_s)


@dataclass(frozen=True)
class EvalClock:
    """The limits of one evaluation, started: what each snapshot may take now."""

    limits: EvalLimits
    deadline: float | None

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def passed(self) -> bool:
        left = self.remaining_s()
        return left is not None and left <= 0

    def snapshot_s(self, weights: bytes, tokens: int, device: str) -> float:
        """The limit for a snapshot with these weights scoring `tokens` tokens on `device`, starting now."""
        limit = self.limits.per_snapshot_s
        if limit is None:
            limit = snapshot_limit_s(parameter_count(weights), tokens, device)
        left = self.remaining_s()
        return limit if left is None else max(min(limit, left), 1e-3)

    def passed_reason(self) -> str:
        return (f"not scored: the evaluation's limit of {self.limits.total_s:g} s (--eval-timeout) had passed "
                "before its turn")


__all__ = ["EvalClock", "EvalLimits", "FLOOR_FLOPS", "FLOPS_PER_PARAM_TOKEN", "PROBE_SHARE", "START_S",
           "device_kind", "parameter_count", "snapshot_limit_s"]
