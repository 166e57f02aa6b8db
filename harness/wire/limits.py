"""The data server's protocol bounds: how large a request may be, and what a metrics line may hold.

The method's process is untrusted, and everything it sends is read into the runner's memory and part of it
written to the run folder. Without bounds a 3 GB frame grew the runner by 3 GB, 15 MB log lines wrote a
600 MB `metrics.jsonl` in seven seconds, and NaN, a loss of "NaN" spelled as a string, or a forged
`{"event": "snapshot"}` line went into the metrics as if they were the harness's. Each bound is checked
before the bytes are read or written; a request that breaks one ends the run as `invalid` with the rule
it broke (`ProtocolViolation`), and what was written before it stays as it was.

The numbers leave room for what honest methods send, by orders of magnitude:
- requests carry no payload (weights and checkpoints go through the outbox, as files);
- a header is at most 1 MiB (a snapshot's build spec and meta, an ensemble over thousands of snapshots,
  a `ctx.gather` value), 64 KiB for a log line, 4 KiB for the small requests;
- a metrics line has at most 64 keys, strings of at most 1,024 characters, finite numbers only (integers
  within 64 bits), and a rank writes at most 64 MiB of metrics (q0 on fineweb for 256 epochs, a line per
  step, writes about 10 MB);
- a run uses at most 65,536 `ctx.gather` keys (q0 uses three; the server keeps each finished key's name, at
  most 200 characters, to refuse a second value under it, and each value only until every rank has read it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from harness.errors import SlowrunError

RESERVED_EVENTS = frozenset({"snapshot", "violation", "hello-refused", "stopped", "resumed"})
STAMPED_KEYS = frozenset({"tokens", "epochs"})  # the server writes these from its own counts
LOSS_KEYS = ("loss", "train_loss")
NON_FINITE = frozenset({"nan", "inf", "-inf"})  # how the client spells a non-finite loss (str(float))
MAX_METRIC_INT = 1 << 63  # a metrics integer's bound (exclusive): a 64-bit integer, a finite float
KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]{0,63}$")


class ProtocolViolation(SlowrunError):
    """A request broke one of the protocol's bounds; the run ends as invalid."""


@dataclass(frozen=True)
class ProtocolLimits:
    max_header: int = 1 << 20
    op_header: tuple[tuple[str, int], ...] = (("log", 64 << 10), ("snapshot", 1 << 20), ("ensemble", 1 << 20),
                                               ("gather", 1 << 20), ("end", 256 << 10))
    small_header: int = 4 << 10
    max_payload: int = 0
    max_keys: int = 64
    max_string: int = 1024
    max_depth: int = 3
    max_metrics_bytes: int = 64 << 20
    max_gather_keys: int = 1 << 16

    def header_limit(self, op) -> int:
        return _op_limits(self.op_header).get(op, self.small_header)


@lru_cache(maxsize=8)
def _op_limits(op_header: tuple[tuple[str, int], ...]) -> dict[str, int]:
    """The per-request limits as a mapping, built once (they are looked up on every request)."""
    return dict(op_header)


DEFAULT_LIMITS = ProtocolLimits()


@dataclass
class MetricsCheck:
    """What a valid metrics line says beyond its values: a loss the method reports as non-finite."""

    non_finite_loss: tuple[str, str] | None = None


def check_metrics(entry, limits: ProtocolLimits = DEFAULT_LIMITS) -> MetricsCheck:
    """Validate one `ctx.log` entry, or raise ProtocolViolation naming the rule."""
    if not isinstance(entry, dict):
        raise ProtocolViolation("a log entry must be a mapping of metric names to values")
    if len(entry) > limits.max_keys:
        raise ProtocolViolation(f"a log entry has {len(entry)} keys; at most {limits.max_keys} are allowed")
    result = MetricsCheck()
    for key, value in entry.items():
        if not KEY_PATTERN.match(key):
            raise ProtocolViolation(f"metric name {key[:80]!r} must be 1-64 letters, digits, '_', '.', '-' or '/', "
                                    "starting with a letter or '_'")
        if key in STAMPED_KEYS:
            raise ProtocolViolation(f"metric name {key!r} is written by the harness from its own counts; "
                                    "use another name")
        if key == "event" and value in RESERVED_EVENTS:
            raise ProtocolViolation(f"event {value!r} is the harness's own; a method may not log it")
        if key in LOSS_KEYS:
            if isinstance(value, str) and value in NON_FINITE:
                result.non_finite_loss = (key, value)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ProtocolViolation(f"{key} must be a number, got {type(value).__name__} {str(value)[:40]!r}")
        _check_value(key, value, limits, 0)
    return result


def _check_value(key: str, value, limits: ProtocolLimits, depth: int) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        # JSON integers have no size limit, but the runner's readers take metrics as floats (10**400 has
        # none: float() and math.isfinite raise OverflowError), and so do the trackers.
        if abs(value) >= MAX_METRIC_INT:
            raise ProtocolViolation(f"metric {key!r} is an integer of {len(str(abs(value))):,} digits; integers "
                                    "must lie strictly between -2**63 and 2**63 (log a float)")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolViolation(f"metric {key!r} is {value}: numbers must be finite")
        return
    if isinstance(value, str):
        if len(value) > limits.max_string:
            raise ProtocolViolation(f"metric {key!r} is a string of {len(value):,} characters; at most "
                                    f"{limits.max_string:,} are allowed")
        return
    if depth >= limits.max_depth:
        raise ProtocolViolation(f"metric {key!r} nests deeper than {limits.max_depth} levels")
    if isinstance(value, list):
        for item in value:
            _check_value(key, item, limits, depth + 1)
        return
    if isinstance(value, dict):
        for name, item in value.items():
            _check_value(f"{key}.{name}", item, limits, depth + 1)
        return
    raise ProtocolViolation(f"metric {key!r} has a value of type {type(value).__name__}")
