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


def best_interleaved(*fns: Callable[[], object], rounds: int = 3) -> list[float]:
    """The fastest wall-clock time of each of `fns` over `rounds`, run in turn within each round, so a slow
    spell of the machine falls on all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def report(benchmark, name: str, value: float, target: float | None = None, unit: str = "x") -> None:
    benchmark.extra_info[name] = round(value, 4)
    suffix = f" (target <= {target}{unit})" if target is not None else ""
    print(f"\n{name}: {value:.3f}{unit}{suffix}")


def in_process_stream(store, seq_len: int, batch: int):
    """The in-process baseline: the ledger's decision and the reader's windows in this process, widened to
    int64 tensors, with no socket between (what a method got before the trust boundary). Returns a
    function that produces the next (inputs, targets)."""
    import numpy as np
    import torch

    from harness.server.meter import StreamReader
    from harness.server.clock import TrainClock
    from harness.server.ledger import Ledger

    ledger = Ledger(10**15, store.n_tokens, seq_len, 1, 1e9, TrainClock())
    reader = StreamReader(store, seq_len, 0, "bench")

    def next_batch():
        grant = ledger.draw(0, "bench", batch, None)
        tensor = torch.from_numpy(reader.batch(grant.first_window, grant.windows).astype(np.int64))
        return tensor[:, :-1], tensor[:, 1:]

    return next_batch
