"""Losses computed from cached per-token log-probabilities: single snapshots and probability mixtures.

An ensemble here mixes probabilities, p(y) = sum_i w_i p_i(y), never logits: that is the predictor whose
cross-entropy the benchmark reports, and it is what the learned prior optimises. Mixing is done in log
space (log-weights plus logsumexp) so that tokens every member finds unlikely do not underflow to zero.
All sums are accumulated in float64: a split holds ~10M float32 values, and a float32 running sum would
lose the third decimal the leaderboard shows.
"""

from __future__ import annotations

import math

import numpy as np

from harness.errors import SlowrunError

# Tokens processed at once when mixing: bounds the float64 working set to M x 1M values.
MIX_CHUNK = 1 << 20


def mean_nll(logp: np.ndarray) -> float:
    """Mean negative log-likelihood in nats per token over every entry of ``logp``."""
    array = np.asarray(logp)
    if array.size == 0:
        raise SlowrunError("cannot average an empty set of log-probabilities; the evaluation split has no targets")
    total = float(np.sum(array, dtype=np.float64))
    if not math.isfinite(total):
        raise SlowrunError("the log-probabilities contain NaN or -inf; the loss is undefined")
    return -total / array.size


def bits_per_byte(logp: np.ndarray, target_bytes: np.ndarray) -> float:
    """Loss in bits over the targets that spell text, divided by the number of bytes they spell.

    ``target_bytes[j]`` is the UTF-8 length of target j's token; a BOS target has zero bytes. This is
    Slowrun's definition (qlabs-eng/slowrun `train.py`, `evaluate_bpb`: the numerator is the sum of
    loss x [bytes > 0]), so the numbers compare with its tables: the loss on document boundaries, which
    spell no text, is left out of both sides. Bits per byte compares across tokenizers, which nats per
    token does not. (Nats per token, `mean_nll`, still counts every target, BOS included, as Slowrun's
    loss does.)
    """
    array = np.asarray(logp)
    nbytes = np.asarray(target_bytes)
    if array.shape != nbytes.shape:
        raise SlowrunError(
            f"target_bytes must align with the targets: log-probabilities have shape {array.shape}, "
            f"target_bytes {nbytes.shape}"
        )
    if not np.issubdtype(nbytes.dtype, np.integer):
        raise SlowrunError(f"target_bytes must be integer byte counts, got dtype {nbytes.dtype}")
    if nbytes.size and int(nbytes.min()) < 0:
        raise SlowrunError("target_bytes contains a negative byte count")
    total_bytes = int(np.sum(nbytes, dtype=np.int64))
    if total_bytes <= 0:
        raise SlowrunError("the targets spell zero bytes in total, so bits per byte is undefined")
    total = float(np.sum(array[nbytes > 0], dtype=np.float64))
    if not math.isfinite(total):
        raise SlowrunError("the log-probabilities contain NaN or -inf; the loss is undefined")
    return -total / math.log(2.0) / total_bytes


def _members(logps) -> list[np.ndarray]:
    members = list(logps) if not isinstance(logps, np.ndarray) else [logps[i] for i in range(logps.shape[0])]
    if not members:
        raise SlowrunError("an ensemble needs at least one member")
    shape = np.shape(members[0])
    for index, member in enumerate(members):
        if np.shape(member) != shape:
            raise SlowrunError(
                f"every member must score the same targets: member 0 has shape {shape}, member {index} "
                f"has {np.shape(member)}"
            )
    return members


def normalise_weights(weights, n_members: int) -> np.ndarray:
    """Mixture weights as float64 summing to one; bad weights are refused rather than patched. The one
    normalisation of the harness: the data server's ``set_ensemble`` uses it too."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != n_members:
        raise SlowrunError(f"got {w.shape[0]} weights for {n_members} ensemble members")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise SlowrunError(f"mixture weights must be finite and non-negative, got {w.tolist()}")
    with np.errstate(over="ignore"):  # an overflowing sum is handled below, not warned about
        total = float(w.sum())
    if total <= 0:
        raise SlowrunError("mixture weights must not all be zero")
    if not np.isfinite(total):  # huge weights ({a: 1e308, b: 1e308}) overflow the sum: scale them first
        w = w / w.max()
        total = float(w.sum())
    return w / total


def mixture_logp(logps, weights) -> np.ndarray:
    """log sum_i w_i p_i per target, for members given as an (M, ...) array or a list of equal-shape arrays.

    Weights are normalised to sum to one. Members with zero weight are skipped, so a member whose cache
    contains -inf cannot poison a mixture it takes no part in. The result is float64 with the shape of
    one member.
    """
    members = _members(logps)
    w = normalise_weights(weights, len(members))
    active = [i for i in range(len(members)) if w[i] > 0]
    log_w = np.log(w[active])[:, None]
    flat = [np.asarray(members[i]).reshape(-1) for i in active]
    size = flat[0].shape[0]
    out = np.empty(size, dtype=np.float64)
    for start in range(0, size, MIX_CHUNK):
        stop = min(size, start + MIX_CHUNK)
        block = np.stack([member[start:stop] for member in flat]).astype(np.float64) + log_w
        peak = block.max(axis=0)
        safe_peak = np.where(np.isfinite(peak), peak, 0.0)
        with np.errstate(divide="ignore"):
            out[start:stop] = safe_peak + np.log(np.exp(block - safe_peak).sum(axis=0))
    return out.reshape(np.shape(members[0]))


def ensemble_nll(logps, weights) -> float:
    """Mean NLL (nats/token) of the probability mixture with these weights."""
    return mean_nll(mixture_logp(logps, weights))


def ensemble_bits_per_byte(logps, weights, target_bytes: np.ndarray) -> float:
    """Bits per byte of the probability mixture with these weights (BOS targets carry zero bytes)."""
    return bits_per_byte(mixture_logp(logps, weights), target_bytes)
