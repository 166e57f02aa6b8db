"""Per-token log-probabilities of a model over evaluation windows, and their on-disk cache.

Evaluation runs every snapshot over the validation windows exactly once; everything after that (single
losses, ensembles, the inference-budget sweep, the learned prior, curves) is arithmetic on the cached
``log p(target)`` arrays. So this module is the only place a model is run for scoring, and it is written
to keep memory bounded: windows are taken a batch at a time (they may be a memory-mapped split), and the
normalisation over the vocabulary is done per batch and, if asked, per slice of time steps, so a
full-split softmax never exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from harness.common.atomic import atomic_output
from harness.errors import SlowrunError

# Upper bound on the number of logits normalised at once when no time chunk is given: 16M float32
# values (64 MB), which keeps a GPT-2 vocabulary batch of a few windows within a laptop's memory.
DEFAULT_MAX_LOGITS = 1 << 24


def _check_windows(windows) -> np.ndarray:
    array = np.asarray(windows) if not isinstance(windows, np.ndarray) else windows
    if array.ndim != 2:
        raise SlowrunError(
            f"windows must be a 2-D array (n_windows, seq_len + 1), got shape {array.shape}; "
            "reshape the token stream into windows first"
        )
    if array.shape[1] < 2:
        raise SlowrunError(f"each window needs at least 2 tokens (one input, one target), got {array.shape[1]}")
    if not np.issubdtype(array.dtype, np.integer):
        raise SlowrunError(f"windows must hold integer token ids, got dtype {array.dtype}")
    return array


def _time_chunk(batch: int, seq_len: int, vocab: int, time_chunk: int | None) -> int:
    if time_chunk is not None:
        if time_chunk <= 0:
            raise SlowrunError(f"time_chunk must be a positive number of time steps, got {time_chunk}")
        return min(time_chunk, seq_len)
    return max(1, min(seq_len, DEFAULT_MAX_LOGITS // max(1, batch * vocab)))


def _batch_logprobs(logits: torch.Tensor, targets: torch.Tensor, time_chunk: int | None) -> torch.Tensor:
    """log p(target) for one batch, normalising at most ``time_chunk`` time steps at a time."""
    batch, seq_len, vocab = logits.shape
    step = _time_chunk(batch, seq_len, vocab, time_chunk)
    out = torch.empty((batch, seq_len), dtype=torch.float32, device=logits.device)
    for start in range(0, seq_len, step):
        stop = min(seq_len, start + step)
        chunk = logits[:, start:stop].float()  # bf16/fp16 logits are normalised in float32
        logp = torch.log_softmax(chunk, dim=-1)
        out[:, start:stop] = logp.gather(-1, targets[:, start:stop].unsqueeze(-1)).squeeze(-1)
    return out


def token_logprobs(
    model: torch.nn.Module,
    windows: np.ndarray,
    batch_size: int,
    device: str | torch.device = "cpu",
    *,
    time_chunk: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """log p(target) for every target of every window, as float32 of shape (n_windows, seq_len).

    ``model(inputs)`` takes a LongTensor [B, T] and returns logits [B, T, V]. The model is put in eval
    mode for the pass (dropout would otherwise make the cache depend on the run) and given back in the
    mode it came in. ``time_chunk`` caps how many time steps are normalised at once; by default it is
    chosen so that at most ``DEFAULT_MAX_LOGITS`` logits are normalised together. A non-finite
    log-probability is an error, not a number to average: it means the model produced NaN/inf logits.
    """
    array = _check_windows(windows)
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise SlowrunError(f"batch_size must be a positive integer, got {batch_size!r}")
    n_windows, width = array.shape
    seq_len = width - 1
    result = np.empty((n_windows, seq_len), dtype=np.float32)
    was_training = model.training
    model.eval()
    starts = range(0, n_windows, batch_size)
    from harness.common.progress import progress as make_progress

    bar = make_progress(n_windows, desc="log-probs", unit="windows", enabled=progress)

    # The last batch is scored in the shape of the others, filled with copies of its last window whose
    # outputs are dropped: bf16 kernels pick their algorithm by shape, and a window scored in a smaller
    # batch than the one the statelessness probe re-scores it in could differ by more than noise.
    full = batch_size if n_windows >= batch_size else n_windows

    def batches():
        for start in starts:
            stop = min(n_windows, start + batch_size)
            rows = np.asarray(array[start:stop], dtype=np.int64)
            if stop - start < full:
                rows = np.concatenate([rows, np.repeat(rows[-1:], full - (stop - start), axis=0)])
            tokens = torch.from_numpy(rows).to(device)
            yield start, stop, tokens[:, :-1], tokens[:, 1:]

    try:
        with torch.inference_mode():
            for (start, stop, inputs, targets), logits in model_outputs(model, batches()):
                if logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(inputs.shape):
                    raise SlowrunError(
                        f"the model must return logits of shape [batch, seq_len, vocab] = "
                        f"[{inputs.shape[0]}, {inputs.shape[1]}, V], got {tuple(logits.shape)}"
                    )
                vocab = logits.shape[-1]
                low, high = int(targets.min()), int(targets.max())
                if low < 0 or high >= vocab:
                    raise SlowrunError(
                        f"target token ids must lie in [0, {vocab}) for a {vocab}-way model, found "
                        f"{low if low < 0 else high} in windows {start}..{stop - 1}; the model and the "
                        "prepared data use different vocabularies"
                    )
                kept = stop - start  # (the filler rows of a last batch are dropped here)
                batch_logp = _batch_logprobs(logits[:kept], targets[:kept], time_chunk).cpu().numpy()
                if not np.all(np.isfinite(batch_logp)):
                    bad = int(np.argwhere(~np.isfinite(batch_logp))[0, 0]) + start
                    raise SlowrunError(
                        f"the model gave a non-finite log-probability in window {bad}; its logits contain "
                        "NaN or infinity, so the snapshot cannot be scored"
                    )
                result[start:stop] = batch_logp
                bar.update(stop - start)
    finally:
        bar.close()
        model.train(was_training)
    return result


def model_outputs(model, batches):
    """``(item, model(item[2]))`` for each item of ``batches`` (whose third element is the inputs), in order.

    A model that runs elsewhere (``pipelined``: an evaluation worker, :class:`harness.eval.remote_model.
    RemoteModel`) gets the next batch before this process has finished with the last one, so its forward
    pass overlaps the checks and normalisation done here; at most two batches are in flight. If the
    caller stops early, the batches still in flight are collected and dropped, so the model can be used
    again."""
    if not getattr(model, "pipelined", False):
        for item in batches:
            yield item, model(item[2])
        return
    waiting: list = []
    try:
        for item in batches:
            model.submit(item[2])
            waiting.append(item)
            if len(waiting) == 2:
                yield waiting.pop(0), model.collect()
        while waiting:
            yield waiting.pop(0), model.collect()
    finally:
        for _ in waiting:
            try:
                model.collect()
            except Exception:  # noqa: BLE001 - the error that stopped the caller is the one that counts
                break


def save_logprobs(path: str | os.PathLike, logp: np.ndarray) -> Path:
    """Write a cache as a float32 ``.npy`` file atomically: a reader sees the old file or the new, never half."""
    target = Path(path)
    array = np.asarray(logp)
    if not np.issubdtype(array.dtype, np.floating):
        raise SlowrunError(f"log-probabilities must be floating point, got dtype {array.dtype}")
    with atomic_output(target) as handle:
        np.save(handle, np.ascontiguousarray(array, dtype=np.float32))
    return target


def load_logprobs(path: str | os.PathLike) -> np.ndarray:
    """Open a cache memory-mapped (read-only), so sweeps over many snapshots do not hold them all in RAM."""
    source = Path(path)
    if not source.is_file():
        raise SlowrunError(f"log-probability cache {source} does not exist; evaluate the snapshot first")
    try:
        array = np.load(source, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SlowrunError(
            f"log-probability cache {source} is unreadable ({exc}); delete it and evaluate the snapshot again"
        ) from exc
    if array.dtype != np.float32:
        raise SlowrunError(
            f"log-probability cache {source} holds {array.dtype}, expected float32; it was not written by "
            "save_logprobs, delete it and evaluate again"
        )
    return array
