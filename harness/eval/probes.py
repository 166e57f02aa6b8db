"""Probes that every snapshot must pass before its scores count: causality and statelessness.

A language model's score is only meaningful if the prediction at position t uses tokens 0..t alone and
does not depend on what else it was shown. Both are properties of the model's code, which the method
writes, so the harness checks them on the model itself, through the same calls it scores with:

- **Causality.** A few validation windows are sent again with every token after a cut point t replaced
  by the tokens of another real window at the same positions (real text, not random ids, so the input
  looks like any other). The log-probabilities at positions <= t must not change. Each position compares
  the log-probability of the window's true next token and of a fixed random set of vocabulary ids.
  The probe batches have the scoring batch size and are slipped in between scoring calls at random
  points (:class:`ProbedModel`), so a model cannot behave only while it is being probed.
- **Statelessness.** After scoring, a sample of validation windows is scored again in another order and
  at other batch positions, next to other windows; half of them with their tail past a random cut
  replaced as above. Their log-probabilities (up to the cut) must equal the scored ones. This catches
  learning on the validation data during evaluation, outputs that depend on the call count or on a memory
  of windows seen, and predictions that peek at the neighbouring rows of a batch (in scoring, the next
  row is the next stretch of the same text).

Tolerances (:func:`logprob_tolerance`): the same input through the same kernels gives the same floats,
but to absorb kernel nondeterminism 1e-5 (absolute, on log-probabilities after log_softmax in float32)
is allowed when the evaluation runs in float32, and 0.03 when it runs under bfloat16 autocast (about one
bfloat16 step of a logit between 4 and 8). The tolerance follows the evaluation's dtype, which the
harness chooses, never the dtype of the logits a model returns: a model that returned float16 logits on a
float32 evaluation used to get 0.03 nats of slack, room for a peek at the next token worth about nine
times a record's margin. A probe that fails makes the snapshot invalid (:class:`ProbeFailed`).

Which windows and cuts are drawn comes from a seed; by default a fresh random one per evaluation, so the
published code does not tell a method which calls are probes.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from harness.eval.remote_model import InvalidSnapshot, all_finite

FLOAT32_TOLERANCE = 1e-5
HALF_TOLERANCE = 0.03


class ProbeFailed(InvalidSnapshot):
    """The model failed a causality or statelessness probe."""


@dataclass(frozen=True)
class ProbeSettings:
    causal_windows: int = 4  # validation windows whose tail is replaced
    cuts_per_window: int = 3  # cut points per window
    stateless_windows: int = 8  # windows scored a second time after scoring (at least; a batch is filled)
    vocab_ids: int = 63  # random vocabulary ids compared at every position, besides the true next token
    seed: int | None = None  # None: fresh randomness for each evaluation
    eval_dtype: str = "float32"  # the evaluation's precision (float32, or bfloat16 autocast): sets the tolerance

    @property
    def tolerance(self) -> float:
        return logprob_tolerance(self.eval_dtype)

    def rng(self, *stream: int) -> np.random.Generator:
        seed = self.seed if self.seed is not None else secrets.randbits(64)
        return np.random.default_rng([seed, *stream])


def logprob_tolerance(eval_dtype: str) -> float:
    """The largest difference between two log-probabilities of the same input that still counts as equal,
    for an evaluation run in `eval_dtype` (harness.eval.evaluation.EVAL_DTYPES)."""
    if eval_dtype == "float32":
        return FLOAT32_TOLERANCE
    if eval_dtype == "bfloat16":
        return HALF_TOLERANCE
    raise ValueError(f"no probe tolerance for an evaluation in {eval_dtype!r}")


def _call(model, inputs: np.ndarray, device) -> torch.Tensor:
    tokens = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.int64)).to(device)
    with torch.inference_mode():
        logits = model(tokens)
    return _checked(logits, tokens.shape)


def _checked(logits, shape) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(shape):
        raise InvalidSnapshot(f"the model returned logits of shape {tuple(getattr(logits, 'shape', ()))} for "
                              f"input {tuple(shape)}; expected [batch, time, vocab]")
    if not all_finite(logits):
        raise InvalidSnapshot("the model gave non-finite logits (NaN or infinity), so it cannot be scored")
    return logits


def _log_softmax_at(logits: torch.Tensor, ids: torch.Tensor) -> np.ndarray:
    """float32 log_softmax of one row's logits [T, V] at ``ids`` [T, K] -> [T, K] (as token_logprobs does)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, ids.to(logp.device)).cpu().numpy()


def _batches(rows: list, fillers: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[list]:
    """Shuffle ``rows`` (each (key, inputs)) with filler rows into full batches of ``batch_size``."""
    count = -(-len(rows) // batch_size) * batch_size
    picks = rng.choice(len(fillers), size=count - len(rows), replace=count - len(rows) > len(fillers))
    everything = rows + [(None, fillers[i]) for i in picks]
    order = rng.permutation(len(everything))
    mixed = [everything[i] for i in order]
    return [mixed[i : i + batch_size] for i in range(0, count, batch_size)]


class CausalityProbe:
    """Originals and tail-replaced copies of a few windows, in batches; judged once all have run."""

    def __init__(self, windows: np.ndarray, batch_size: int, settings: ProbeSettings, rng: np.random.Generator):
        windows = np.asarray(windows)
        n, width = windows.shape
        self.steps = width - 1
        self.rng = rng
        self.settings = settings
        self.windows = windows
        self.results: dict = {}
        self.ids: torch.Tensor | None = None
        self.pairs: list[tuple[int, int, int]] = []  # (window, cut, donor)
        rows = []
        if n >= 2 and self.steps >= 2:
            chosen = rng.choice(n, size=min(settings.causal_windows, n), replace=False)
            for w in chosen.tolist():
                rows.append((("original", w, -1), windows[w, :-1]))
                cuts = rng.choice(self.steps - 1, size=min(settings.cuts_per_window, self.steps - 1), replace=False)
                for t in sorted(cuts.tolist()):
                    donor = int(rng.integers(n - 1))
                    donor += donor >= w
                    spliced = np.concatenate([windows[w, : t + 1], windows[donor, t + 1 : self.steps]])
                    self.pairs.append((w, t, donor))
                    rows.append((("spliced", w, t), spliced))
        size = max(1, min(batch_size, n))
        self.pending = _batches(rows, windows[:, :-1], size, rng) if rows else []

    def _compare_ids(self, vocab: int, window: int) -> torch.Tensor:
        if self.ids is None:
            count = min(self.settings.vocab_ids, vocab)
            self.ids = torch.from_numpy(self.rng.choice(vocab, size=count, replace=False).astype(np.int64))
        targets = torch.from_numpy(np.asarray(self.windows[window, 1:], dtype=np.int64))[:, None]
        return torch.cat([targets, self.ids.expand(self.steps, -1)], dim=1)

    def run_batch(self, model, device) -> None:
        batch, inputs = self.take_batch()
        self.record(batch, _call(model, inputs, device))

    def take_batch(self) -> tuple[list, np.ndarray]:
        """The next probe batch: its rows (key, inputs) and their inputs stacked, [B, T]."""
        batch = self.pending.pop(0)
        return batch, np.stack([inputs for _, inputs in batch])

    def record(self, batch: list, logits) -> None:
        """Keep what the comparison needs from the logits the model gave for ``batch``."""
        logits = _checked(logits, (len(batch), self.steps))
        for row, (key, _) in enumerate(batch):
            if key is not None:
                self.results[key] = _log_softmax_at(logits[row], self._compare_ids(logits.shape[-1], key[1]))

    def verdict(self) -> None:
        """Raise ProbeFailed if a position at or before a cut changed when the tail after it was replaced."""
        tolerance = self.settings.tolerance
        for w, t, donor in self.pairs:
            original, spliced = self.results[("original", w, -1)], self.results[("spliced", w, t)]
            diff = np.abs(original[: t + 1] - spliced[: t + 1])
            if not diff.max() <= tolerance:
                position = int(np.argmax(diff.max(axis=1)))
                raise ProbeFailed(
                    f"causality probe failed: replacing the tokens after position {t} of validation window {w} "
                    f"(by those of window {donor}) changed the log-probabilities at position {position} by "
                    f"{float(diff.max()):.3g} (tolerance {tolerance:g}); the prediction at a position must "
                    "depend on that position and the ones before it only")


class ProbedModel:
    """Wraps a model for scoring; runs the causality probe's batches between scoring calls at random points.

    ``expected_calls`` is how many scoring calls will come (the insertion points are drawn among them);
    :meth:`finish` runs whatever probe batches are left and gives the verdict.
    """

    def __init__(self, model, probe: CausalityProbe, expected_calls: int, device, rng: np.random.Generator):
        self.model = model
        self.probe = probe
        self.device = device
        self.calls = 0
        points = rng.integers(0, max(1, expected_calls), size=len(probe.pending))
        self.schedule = sorted(points.tolist())
        self._owed: deque = deque()  # for each batch submitted and not collected: its probe rows, or None

    @property
    def training(self) -> bool:
        return self.model.training

    def eval(self):
        self.model.eval()
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def _due(self) -> bool:
        if self.schedule and self.schedule[0] <= self.calls and self.probe.pending:
            self.schedule.pop(0)
            return True
        return False

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        while self._due():
            self.probe.run_batch(self.model, self.device)
        self.calls += 1
        return self.model(inputs)

    # A model that runs elsewhere takes batches ahead (harness.eval.logprobs.model_outputs): the probe batches
    # due before a scoring call are submitted before it, in the same stream, and their logits are taken
    # off the stream by collect(), so the worker sees the same sequence of calls either way.
    @property
    def pipelined(self) -> bool:
        return getattr(self.model, "pipelined", False)

    def submit(self, inputs: torch.Tensor) -> None:
        while self._due():
            batch, probe_inputs = self.probe.take_batch()
            self.model.submit(torch.from_numpy(np.ascontiguousarray(probe_inputs, dtype=np.int64)).to(self.device))
            self._owed.append(batch)
        self.calls += 1
        self.model.submit(inputs)
        self._owed.append(None)

    def collect(self) -> torch.Tensor:
        while True:
            batch = self._owed.popleft()
            logits = self.model.collect()
            if batch is None:
                return logits
            self.probe.record(batch, logits)

    def finish(self) -> None:
        while self.probe.pending:
            self.probe.run_batch(self.model, self.device)
        self.probe.verdict()


def statelessness_probe(model, windows: np.ndarray, scored: np.ndarray, batch_size: int, device,
                        settings: ProbeSettings, rng: np.random.Generator) -> None:
    """Score a sample of ``windows`` again, elsewhere in other batches, and compare with ``scored``.

    ``scored`` holds the log p(target) of every window from scoring, shape (n, T). Half of the sample
    have their tail after a random cut replaced by another window's tokens (compared up to the cut), so a
    model that replays what it answered for a window it has seen is tested as well.
    """
    windows, scored = np.asarray(windows), np.asarray(scored)
    n, width = windows.shape
    steps = width - 1
    if n == 0:
        return
    size = max(1, min(batch_size, n))
    wanted = min(settings.stateless_windows, n)
    if wanted == 0:
        return
    # The last batch is filled with more sampled windows rather than unchecked fillers: they cost the same.
    chosen = rng.choice(n, size=min(-(-wanted // size) * size, n), replace=False).tolist()
    rows = []
    for k, w in enumerate(chosen):
        if k % 2 and n >= 2 and steps >= 2:
            t = int(rng.integers(steps - 1))
            donor = int(rng.integers(n - 1))
            donor += donor >= w
            rows.append(((w, t), np.concatenate([windows[w, : t + 1], windows[donor, t + 1 : steps]])))
        else:
            rows.append(((w, steps - 1), windows[w, :-1]))
    batches = _batches(rows, windows[:, :-1], size, rng)
    for _ in range(20):  # another batch position than in scoring (row w sat at w % size there)
        if size == 1 or all(key is None or key[0] % size != pos for b in batches for pos, (key, _) in enumerate(b)):
            break
        batches = _batches(rows, windows[:, :-1], size, rng)
    tolerance = settings.tolerance
    for batch in batches:
        logits = _call(model, np.stack([inputs for _, inputs in batch]), device)
        for row, (key, _) in enumerate(batch):
            if key is None:
                continue
            w, t = key
            targets = torch.from_numpy(np.asarray(windows[w, 1 : t + 2], dtype=np.int64))[:, None]
            again = _log_softmax_at(logits[row, : t + 1], targets)[:, 0]
            diff = np.abs(again - scored[w, : t + 1])
            if not diff.max() <= tolerance:
                position = int(np.argmax(diff))
                raise ProbeFailed(
                    f"statelessness probe failed: validation window {w} scored again (elsewhere in another batch) "
                    f"gave log-probabilities that differ from its first scoring by {float(diff.max()):.3g} at "
                    f"position {position} (tolerance {tolerance:g}); a model's output must depend on its input "
                    "window alone, not on earlier calls or on the other windows of the batch")
