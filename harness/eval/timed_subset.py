"""The validation windows Slowrun's timed tracks score, so a record's loss can be set beside their tables.

Slowrun's limited, tiny and two-hour scripts (qlabs-eng/slowrun `train.py`, `tiny/train.py`,
`two_hour/train.py`) read the validation split as disjoint windows of 2,049 tokens, permute them with
`numpy.random.RandomState(42).permutation(n)` (the file's `seq_shuffle_seed`), and score whole steps of
`device_batch_size x world_size` windows, at most `EVAL_TOKENS // (B x W x 2048)` of them. The windows
past the last whole step are never scored: for the 4,880 windows of the official split and B x W = 32
(4 per GPU on 8 GPUs, their default) that drops the last 16 of the permutation, scoring 4,864. Its
unlimited script scores every window, as the harness's own full-window loss does.

The harness's validation windows are laid out the same way (disjoint windows of seq_len + 1 tokens from
the split's start), so the subset is a list of window indices; the loss over it is the mean over those
windows' targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SLOWRUN_VAL_SEED = 42  # `seq_shuffle_seed` of Slowrun's fineweb_val.pt
SLOWRUN_EVAL_TOKENS = 10_000_000  # `EVAL_TOKENS` of Slowrun's timed-track scripts
STANDARD_BATCH_X_WORLD = 32  # device batch 4 x 8 GPUs (limited, two-hour); tiny's 32 x 8 scores the same windows


@dataclass(frozen=True)
class TimedSubset:
    batch_x_world: int
    seed: int
    windows: np.ndarray  # indices into the validation windows, in Slowrun's order

    def describe(self, total: int) -> str:
        return (f"the {len(self.windows):,} of {total:,} validation windows Slowrun's timed tracks score "
                f"(RandomState({self.seed}) permutation cut to whole steps of B x W = {self.batch_x_world})")


def timed_subset(n_windows: int, seq_len: int, batch_x_world: int = STANDARD_BATCH_X_WORLD,
                 seed: int = SLOWRUN_VAL_SEED, eval_tokens: int = SLOWRUN_EVAL_TOKENS) -> TimedSubset:
    """The windows scored by Slowrun's timed-track evaluation with `batch_x_world` windows per step."""
    if n_windows < 1 or batch_x_world < 1 or seq_len < 1:
        raise ValueError("n_windows, seq_len and batch_x_world must be positive")
    steps = min(n_windows // batch_x_world, eval_tokens // (batch_x_world * seq_len))
    order = np.random.RandomState(seed).permutation(n_windows)
    return TimedSubset(batch_x_world, seed, order[: steps * batch_x_world])


def subset_loss(logp: np.ndarray, n_windows: int, subset: TimedSubset) -> float:
    """Mean negative log-probability over the targets of the subset's windows (`logp` flattened, window-major)."""
    per_window = np.asarray(logp, dtype=np.float64).reshape(n_windows, -1)
    chosen = per_window[subset.windows]
    return float(-chosen.sum() / chosen.size)


def subset_summary(logp: np.ndarray, target_bytes: np.ndarray | None, n_windows: int, seq_len: int,
                   batch_x_world: int = STANDARD_BATCH_X_WORLD) -> dict | None:
    """The record's `result.timed_subset`: loss (and bits per byte) over the subset, or None when the
    split has fewer windows than one step."""
    from harness.eval.ensemble import bits_per_byte

    subset = timed_subset(n_windows, seq_len, batch_x_world)
    if not len(subset.windows):
        return None
    bpb = None
    if target_bytes is not None:
        rows = np.asarray(logp).reshape(n_windows, -1)[subset.windows]
        nbytes = np.asarray(target_bytes).reshape(n_windows, -1)[subset.windows]
        bpb = bits_per_byte(rows.reshape(-1), nbytes.reshape(-1))
    return {"val_loss": subset_loss(logp, n_windows, subset), "val_bpb": bpb, "windows": int(len(subset.windows)),
            "of": int(n_windows), "batch_x_world": batch_x_world, "seed": subset.seed,
            "definition": subset.describe(n_windows)}
