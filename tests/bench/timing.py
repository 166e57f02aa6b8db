"""Timing helpers for benchmarks that report a ratio against a baseline measured in the same run."""

from __future__ import annotations

import time
from typing import Callable


def best_time(fn: Callable[[], object], rounds: int = 3) -> float:
    """The fastest of `rounds` wall-clock runs: the least disturbed by other work on a shared machine."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def report(benchmark, name: str, value: float, target: float | None = None, unit: str = "x") -> None:
    benchmark.extra_info[name] = round(value, 4)
    suffix = f" (target <= {target}{unit})" if target is not None else ""
    print(f"\n{name}: {value:.3f}{unit}{suffix}")
