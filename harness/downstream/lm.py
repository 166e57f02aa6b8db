"""lm-eval's view of a snapshot or a weighted ensemble of snapshots.

Choices the scores depend on, and why:
- Every sequence starts with BOS. Training documents were BOS-prefixed, so BOS is the state in which a
  model has learned to expect the start of a text; a prompt without it would begin mid-stream. BOS is
  also the conditioning token for an empty context, and the end-of-text id lm-eval asks for.
- Context is cut from the left at the model's ``seq_len``: the continuation and the context nearest to it
  are kept (SciQ's support paragraphs can exceed a small model's window). A continuation longer than
  ``seq_len`` (some PIQA solutions run to 1,000 characters) is scored in consecutive pieces of at most
  ``seq_len`` tokens, each predicted from as much preceding text as fits, as rolling log-likelihoods are;
  nothing is dropped and no input exceeds the window.
- Members share tokenization and batching: each padded batch goes through every member, and their
  next-token distributions are mixed per position (see :mod:`harness.downstream.mixing`), exactly the
  mixture the validation loss scores. Requests are sorted by length, longest first, so padding is small
  and an out-of-memory error shows up in the first batch.
- Padding is on the right. Under causal attention the padded tail cannot change the scored positions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from harness.downstream.mixing import mixture_scores, score_continuations
from harness.ensemble import normalise_weights
from harness.errors import SlowrunError


class MixtureLM(TemplateLM):
    """Log-likelihoods under p(y) = sum_i w_i p_i(y) for ``models`` (torch modules, ``idx -> logits``).

    ``weights`` default to uniform and are normalised; members with weight zero are dropped. One model
    with any positive weight is that model alone. ``tokenizer`` is a track tokenizer (``encode_batch``,
    ``bos_id``); ``seq_len`` is the longest input the models accept.
    """

    def __init__(self, models: Sequence[torch.nn.Module], weights: Sequence[float] | None = None, *,
                 tokenizer, seq_len: int, batch_size: int = 32, device: str | torch.device = "cpu",
                 progress: bool = False):
        super().__init__()
        models = list(models)
        if not models:
            raise SlowrunError("downstream scoring needs at least one model")
        w = normalise_weights([1.0] * len(models) if weights is None else weights, len(models))
        kept = [i for i in range(len(models)) if w[i] > 0]
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise SlowrunError(f"seq_len must be a positive integer, got {seq_len!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SlowrunError(f"batch_size must be a positive integer, got {batch_size!r}")
        if getattr(tokenizer, "bos_id", None) is None or not hasattr(tokenizer, "encode_batch"):
            raise SlowrunError("the tokenizer must have encode_batch(texts) and a bos_id")
        self.members = [models[i] for i in kept]
        self.weights = tuple(float(w[i]) for i in kept)
        self._log_weights = torch.tensor(np.log(w[kept]), dtype=torch.float64)
        self.text_tokenizer = tokenizer
        self.seq_len = seq_len
        self.batch_size = batch_size
        self._device = torch.device(device)
        self.progress = progress
        self._encoded: dict[str, list[int]] = {}
        self.input_tokens = 0  # tokens fed to each member so far, padding excluded: the work done, for reports

    # ------------------------------------------------------------------ tokenization
    @property
    def eot_token_id(self) -> int:
        return int(self.text_tokenizer.bos_id)

    @property
    def prefix_token_id(self) -> int:
        return int(self.text_tokenizer.bos_id)

    @property
    def max_length(self) -> int:
        return self.seq_len

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Token ids of ``string``, BOS first unless ``add_special_tokens`` is False.

        The text itself is encoded exactly as the track's tokenizer encodes training documents.
        """
        ids = self._encoded.get(string)
        if ids is None:
            ids = [int(t) for t in self.text_tokenizer.encode_batch([string])[0]]
        return ids if add_special_tokens is False else [self.prefix_token_id, *ids]

    def _prime_encodings(self, strings) -> None:
        """Encode every string lm-eval's pairing will ask for in one batch (one call per string is slow)."""
        unique = list(dict.fromkeys(s for s in strings if s not in self._encoded))
        if unique:
            encoded = self.text_tokenizer.encode_batch(unique)
            self._encoded.update({s: [int(t) for t in ids] for s, ids in zip(unique, encoded)})

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        strings = []
        for context, continuation in (req.args for req in requests):
            if context == "":
                strings.append(continuation)
            else:
                strings += [context.rstrip(), context + continuation]  # what _encode_pair encodes
        self._prime_encodings(strings)
        try:
            return super().loglikelihood(requests, disable_tqdm=True)
        finally:
            self._encoded.clear()

    # ------------------------------------------------------------------ scoring
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """Score ``((context, continuation), context_ids, continuation_ids)`` requests in sorted batches."""
        inputs, targets, owners = [], [], []
        for index, (_, context_ids, continuation_ids) in enumerate(requests):
            full = (list(context_ids) or [self.prefix_token_id]) + list(continuation_ids)
            start = len(full) - len(continuation_ids)
            for piece_start in range(start, len(full), self.seq_len):
                piece_end = min(piece_start + self.seq_len, len(full))
                window = full[:piece_end][-(self.seq_len + 1):]
                inputs.append(window[:-1])
                targets.append(full[piece_start:piece_end])
                owners.append(index)
        totals = [0.0] * len(requests)
        greedy = [True] * len(requests)  # an empty continuation has probability one and is trivially greedy
        order = sorted(range(len(inputs)), key=lambda i: (-len(inputs[i]), i))
        bar = tqdm(total=len(inputs), desc="downstream", unit="seq", disable=not self.progress)
        for first in range(0, len(order), self.batch_size):
            batch = order[first : first + self.batch_size]
            batch_totals, batch_greedy = self._score_batch([inputs[i] for i in batch], [targets[i] for i in batch])
            for j, i in enumerate(batch):
                totals[owners[i]] += float(batch_totals[j])
                greedy[owners[i]] = greedy[owners[i]] and bool(batch_greedy[j])
            self.input_tokens += sum(len(inputs[i]) for i in batch)
            bar.update(len(batch))
            bar.set_postfix(tokens=self.input_tokens, refresh=False)
        bar.close()
        return list(zip(totals, greedy))

    @torch.inference_mode()
    def _score_batch(self, inputs: list[list[int]], targets: list[list[int]]):
        lengths = [len(x) for x in inputs]
        width = max(lengths)
        batch = torch.full((len(inputs), width), self.prefix_token_id, dtype=torch.long)
        for row, ids in enumerate(inputs):
            batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        batch = batch.to(self._device)
        counts = torch.tensor([len(t) for t in targets])
        owner = torch.repeat_interleave(torch.arange(len(inputs)), counts)
        # The last len(target) input positions of each row predict its continuation tokens.
        positions = torch.cat([torch.arange(n - len(t), n) for n, t in zip(lengths, targets)])
        target_ids = torch.tensor([t for ts in targets for t in ts], dtype=torch.long)
        member_logits = []
        for model in self.members:
            logits = model(batch)
            if logits.dim() != 3 or logits.shape[:2] != batch.shape:
                raise SlowrunError(f"a model returned logits of shape {tuple(logits.shape)} for input "
                                   f"{tuple(batch.shape)}; expected [batch, time, vocab]")
            member_logits.append(logits[owner.to(logits.device), positions.to(logits.device)].cpu())
        vocab = {m.shape[-1] for m in member_logits}
        if len(vocab) != 1:
            raise SlowrunError(f"ensemble members disagree on the vocabulary size ({sorted(vocab)})")
        if int(target_ids.max()) >= vocab.pop():
            raise SlowrunError("the tokenizer produced an id outside the models' vocabulary; "
                               "use the tokenizer of the track the models were trained on")
        target_lp, argmax = mixture_scores(member_logits, self._log_weights, target_ids)
        return score_continuations(target_lp, argmax, target_ids, owner, len(inputs))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood after BOS: the text is a continuation of BOS alone, which the piecewise
        scoring above already splits into disjoint windows of ``seq_len`` predictions with maximal context."""
        pieces = [((None, None), [self.prefix_token_id], self.tok_encode(string, add_special_tokens=False))
                  for (string,) in (req.args for req in requests)]
        return [logp for logp, _ in self._loglikelihood_tokens(pieces)]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        raise NotImplementedError("Slowrun's downstream model scores log-likelihoods only (multiple-choice "
                                  "and perplexity tasks); it does not generate text")

    def get_model_info(self) -> dict:
        return {"members": len(self.members), "weights": list(self.weights), "seq_len": self.seq_len}
