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
- Members are scored one at a time over every request, so memory holds one model: a member is opened
  (loaded) when scoring reaches it and closed before the next is opened. Each leaves its exact
  log-probability of every scored token and its top-k ids behind; the mixture p(y) = sum_i w_i p_i(y)
  is then formed per token (see :mod:`harness.eval.downstream.mixing`), exactly the mixture the validation
  loss scores. The few tokens whose greedy flag the top-k cannot settle are decided by a second pass
  over the members that mixes their whole distributions at those tokens only. Requests are sorted by
  length, longest first, so padding is small and an out-of-memory error shows up in the first batch.
- Padding is on the right. Under causal attention the padded tail cannot change the scored positions.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch
from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from harness.eval.downstream.mixing import (DEFAULT_TOP_K, add_member_probs, concat_positions, member_positions,
                                       mix_target_logprobs, score_continuations, settle_greedy)
from harness.eval.ensemble import normalise_weights
from harness.errors import SlowrunError


class Member(Protocol):
    """An ensemble member that holds its model only between ``open`` and ``close``.

    ``open`` returns the model (``idx -> logits``); ``close`` releases it and drops every reference to it.
    A member may be opened again after ``close`` (the second pass). An optional ``prepare()`` is called
    while the member before it is being scored, for work that holds no weights (starting a process).
    """

    def open(self): ...

    def close(self) -> None: ...


class LoadedModel:
    """A model already in memory, as a :class:`Member` (nothing to load or release)."""

    def __init__(self, model):
        self.model = model

    def open(self):
        return self.model

    def close(self) -> None:
        pass


def as_member(model) -> Member:
    return model if hasattr(model, "open") and hasattr(model, "close") else LoadedModel(model)


class MixtureLM(TemplateLM):
    """Log-likelihoods under p(y) = sum_i w_i p_i(y) for ``models``: torch modules (``idx -> logits``) or
    :class:`Member` objects that load their model when opened, one at a time.

    ``weights`` default to uniform and are normalised; members with weight zero are dropped. One model
    with any positive weight is that model alone. ``tokenizer`` is a track tokenizer (``encode_batch``,
    ``bos_id``); ``seq_len`` is the longest input the models accept; ``top_k`` how many ids per scored token
    each member keeps for settling greedy flags.
    """

    # Where a batch's shorter inputs are padded (see `_scored_logits`) and which end of a too-long context is
    # cut (see `_loglikelihood_tokens`); downstream records carry `padding_side` in each task's provenance.
    padding_side = "right"
    truncation_side = "left"

    def __init__(self, models: Sequence, weights: Sequence[float] | None = None, *,
                 tokenizer, seq_len: int, batch_size: int = 32, device: str | torch.device = "cpu",
                 progress: bool = False, top_k: int = DEFAULT_TOP_K):
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
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise SlowrunError(f"top_k must be a positive integer, got {top_k!r}")
        self.members = [as_member(models[i]) for i in kept]
        self.top_k = top_k
        self.weights = tuple(float(w[i]) for i in kept)
        self._log_weights = torch.tensor(np.log(w[kept]), dtype=torch.float64)
        self.text_tokenizer = tokenizer
        self.seq_len = seq_len
        self.batch_size = batch_size
        self._device = torch.device(device)
        self.progress = progress
        self._encoded: dict[str, list[int]] = {}
        self.input_tokens = 0  # tokens fed to each member so far, padding excluded: the work done, for reports
        self._vocab: int | None = None  # the first member's vocabulary size; every member must agree

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
        if not inputs:  # only empty continuations: probability one, trivially greedy
            return [(0.0, True)] * len(requests)
        order = sorted(range(len(inputs)), key=lambda i: (-len(inputs[i]), i))
        batches = [order[first : first + self.batch_size] for first in range(0, len(order), self.batch_size)]
        # Scored positions, flat, in batch order: the pieces of `order`, each its targets in turn.
        target_ids = torch.tensor([t for i in order for t in targets[i]], dtype=torch.long)
        owner = torch.tensor([owners[i] for i in order for _ in targets[i]], dtype=torch.long)
        bar = tqdm(total=len(inputs) * len(self.members), desc="downstream", unit="seq", disable=not self.progress)
        per_member = []
        for index in range(len(self.members)):
            model = self._open(index)
            try:
                parts = []
                for batch in batches:
                    logits = self._scored_logits(model, [inputs[i] for i in batch], [targets[i] for i in batch])
                    batch_targets = torch.tensor([t for i in batch for t in targets[i]], dtype=torch.long)
                    parts.append(member_positions(logits, batch_targets, self.top_k))
                    if index == 0:
                        self.input_tokens += sum(len(inputs[i]) for i in batch)
                    bar.update(len(batch))
                    bar.set_postfix(tokens=self.input_tokens, refresh=False)
            finally:
                del model  # the member's close() must be able to free it
                self.members[index].close()
            per_member.append(concat_positions(parts))
        bar.close()
        target_lp = mix_target_logprobs(torch.stack([m.target_lp for m in per_member]), self._log_weights)
        greedy, unsettled = settle_greedy(per_member, self._log_weights, target_ids)
        if bool(unsettled.any()):
            where = unsettled.nonzero().squeeze(1)
            greedy[where] = self._exact_greedy(where, order, inputs, targets, target_ids)
        totals, all_greedy = score_continuations(target_lp, greedy, owner, len(requests))
        return [(float(total), bool(flag)) for total, flag in zip(totals, all_greedy)]

    def _open(self, index: int):
        member = self.members[index]
        model = member.open()
        following = self.members[index + 1] if index + 1 < len(self.members) else None
        if following is not None and hasattr(following, "prepare"):
            following.prepare()  # e.g. start its worker process; it loads no weights until opened
        return model

    def _exact_greedy(self, positions: torch.Tensor, order: list[int], inputs, targets,
                      target_ids: torch.Tensor) -> torch.Tensor:
        """Greedy flags at ``positions`` (flat indices) from the whole mixed distribution there: a second pass
        over the members that scores only the pieces holding those positions."""
        starts, offset = {}, 0
        for piece in order:
            starts[piece] = offset
            offset += len(targets[piece])
        row_of = {int(p): row for row, p in enumerate(positions)}
        pieces = [piece for piece in order
                  if any(starts[piece] + j in row_of for j in range(len(targets[piece])))]
        mixed = None
        for index, log_w in enumerate(self._log_weights.tolist()):
            model = self._open(index)
            try:
                member_mixed = torch.zeros(0)
                for first in range(0, len(pieces), self.batch_size):
                    batch = pieces[first : first + self.batch_size]
                    logits = self._scored_logits(model, [inputs[i] for i in batch], [targets[i] for i in batch])
                    flat = [starts[i] + j for i in batch for j in range(len(targets[i]))]
                    keep = [k for k, p in enumerate(flat) if p in row_of]
                    rows = torch.tensor([row_of[flat[k]] for k in keep], dtype=torch.long)
                    if member_mixed.numel() == 0:
                        member_mixed = torch.zeros(len(row_of), logits.shape[-1], dtype=torch.float64)
                    member_mixed[rows] = add_member_probs(None, logits[keep], log_w)
            finally:
                del model
                self.members[index].close()
            mixed = member_mixed if mixed is None else mixed.add_(member_mixed)
        return mixed.argmax(dim=-1) == target_ids[positions]

    @torch.inference_mode()
    def _scored_logits(self, model, inputs: list[list[int]], targets: list[list[int]]) -> torch.Tensor:
        """The model's logits [N, V] at the positions that predict the targets, in order, on the CPU."""
        lengths = [len(x) for x in inputs]
        width = max(lengths)
        # Right padding (`padding_side`): each row's tokens start at position 0, so the scored positions below
        # are the same as unpadded, and under causal attention the padded tail cannot reach them.
        batch = torch.full((len(inputs), width), self.prefix_token_id, dtype=torch.long)
        for row, ids in enumerate(inputs):
            batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        batch = batch.to(self._device)
        counts = torch.tensor([len(t) for t in targets])
        owner = torch.repeat_interleave(torch.arange(len(inputs)), counts)
        # The last len(target) input positions of each row predict its continuation tokens.
        positions = torch.cat([torch.arange(n - len(t), n) for n, t in zip(lengths, targets)])
        logits = model(batch)
        if logits.dim() != 3 or logits.shape[:2] != batch.shape:
            raise SlowrunError(f"a model returned logits of shape {tuple(logits.shape)} for input "
                               f"{tuple(batch.shape)}; expected [batch, time, vocab]")
        vocab = logits.shape[-1]
        if self._vocab is None:
            self._vocab = vocab
        elif vocab != self._vocab:
            raise SlowrunError(f"ensemble members disagree on the vocabulary size ({sorted({vocab, self._vocab})})")
        if max(t for ts in targets for t in ts) >= vocab:
            raise SlowrunError("the tokenizer produced an id outside the models' vocabulary; "
                               "use the tokenizer of the track the models were trained on")
        return logits[owner.to(logits.device), positions.to(logits.device)].cpu()

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
