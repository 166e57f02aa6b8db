"""One knob for torch's intra-op threads: $SLOWRUN_NUM_THREADS, read by every harness process.

Small models on a shared CPU run many times slower when torch's threads compete with other work;
setting the variable (the test suite sets 1) fixes the count in the method's process and in evaluation.
"""

from __future__ import annotations

import os

ENV = "SLOWRUN_NUM_THREADS"


def apply_thread_setting() -> None:
    value = os.environ.get(ENV)
    if not value:
        return
    import torch

    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"${ENV} must be a positive integer, got {value!r}") from None
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
