"""A seeded synthetic language whose true next-token probabilities are known.

The offline default track must run on a fresh machine with no downloads, yet still behave like language
modelling under a data limit: a model should keep improving for a few epochs, then over-fit. A hidden
Markov model gives that: its structure (sparse state transitions, long-tailed emissions) is learnable
but not from a small sample, and the forward algorithm gives the exact probability of every token given
its document's history, so the manifest can state the best loss any model could reach.

Documents are generated as: state z1 ~ pi, emit x1 ~ B[z1]; after every emitted token the document ends
with probability `p_end`, otherwise z' ~ A[z] and x' ~ B[z']. In the prepared stream each document is
preceded by BOS, so the true probability of a BOS target is `p_end` and of a token target
`(1 - p_end) * P(x | history)`.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import numpy as np

from harness.data.documents import Document


@dataclass(frozen=True)
class SyntheticLanguage:
    """The parameters of the language; everything is derived from `seed`, so the seed is the language."""

    seed: int = 0
    vocab_size: int = 512  # including BOS, which is the last id
    n_states: int = 64
    transition_concentration: float = 0.03
    emission_concentration: float = 0.001
    zipf_exponent: float = 0.8
    mean_doc_tokens: float = 200.0

    @property
    def bos_id(self) -> int:
        return self.vocab_size - 1

    @property
    def p_end(self) -> float:
        return 1.0 / self.mean_doc_tokens

    @cached_property
    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pi, A, B): initial state probabilities, transitions (S, S), emissions (S, V-1), float64."""
        rng = np.random.default_rng([self.seed, 0x5107])
        n_tokens = self.vocab_size - 1
        pi = rng.dirichlet(np.full(self.n_states, 0.5))
        transitions = rng.dirichlet(np.full(self.n_states, self.transition_concentration), size=self.n_states)
        # Emissions share a Zipfian base measure, so common tokens are common everywhere, as in text.
        base = 1.0 / np.arange(1, n_tokens + 1) ** self.zipf_exponent
        base = base[rng.permutation(n_tokens)]
        base = base / base.sum() * n_tokens * self.emission_concentration
        emissions = np.stack([rng.dirichlet(base) for _ in range(self.n_states)])
        # Dirichlet draws can underflow to exact zeros; a floor keeps every token possible (finite loss).
        emissions = np.maximum(emissions, 1e-12)
        emissions /= emissions.sum(axis=1, keepdims=True)
        transitions = np.maximum(transitions, 1e-12)
        transitions /= transitions.sum(axis=1, keepdims=True)
        return pi, transitions, emissions

    def describe(self) -> dict:
        return {
            "kind": "synthetic",
            "seed": self.seed,
            "vocab_size": self.vocab_size,
            "n_states": self.n_states,
            "transition_concentration": self.transition_concentration,
            "emission_concentration": self.emission_concentration,
            "zipf_exponent": self.zipf_exponent,
            "mean_doc_tokens": self.mean_doc_tokens,
        }

    def documents(self, stream_seed: int = 0) -> Iterator[np.ndarray]:
        """An endless stream of documents (token ids without BOS), reproducible from `stream_seed`."""
        pi, transitions, emissions = self.tables
        pi_cdf = np.cumsum(pi).tolist()
        a_cdf = [np.cumsum(row).tolist() for row in transitions]
        b_cdf = [np.cumsum(row).tolist() for row in emissions]
        rng = np.random.default_rng([self.seed, stream_seed, 0xD0C])
        p_end = self.p_end
        last_state = self.n_states - 1
        last_token = self.vocab_size - 2
        draws = iter(())
        while True:
            draw = next(draws, None)
            if draw is None:  # refill: uniforms are drawn in bulk, three per generated token
                draws = iter(rng.random((8192, 3)).tolist())
                draw = next(draws)
            state = min(bisect.bisect_right(pi_cdf, draw[0]), last_state)
            doc = [min(bisect.bisect_right(b_cdf[state], draw[1]), last_token)]
            while True:
                draw = next(draws, None)
                if draw is None:
                    draws = iter(rng.random((8192, 3)).tolist())
                    draw = next(draws)
                draw_end, draw_state, draw_token = draw
                if draw_end < p_end:
                    break
                state = min(bisect.bisect_right(a_cdf[state], draw_state), last_state)
                doc.append(min(bisect.bisect_right(b_cdf[state], draw_token), last_token))
            yield np.asarray(doc, dtype=np.int64)

    def true_logprobs(self, tokens: np.ndarray) -> np.ndarray:
        """log P(tokens[j] | tokens[:j]) for j >= 1 under the language (float64, length len(tokens) - 1).

        Position j conditions on its own document only (the state resets at BOS), which is what the
        generator does. Entry j-1 of the result belongs to target tokens[j].
        """
        pi, transitions, emissions = self.tables
        bos = self.bos_id
        log_continue = math.log1p(-self.p_end)
        log_end = math.log(self.p_end)
        tokens = np.asarray(tokens, dtype=np.int64)
        out = np.empty(len(tokens) - 1, dtype=np.float64)
        belief = None  # filtered state distribution after the latest token; None right after BOS
        for j in range(1, len(tokens)):
            target = int(tokens[j])
            previous = int(tokens[j - 1])
            if target == bos:
                out[j - 1] = log_end
                belief = None
                continue
            if previous == bos:
                prior = pi
                continuation = 0.0  # a document has at least one token
            else:
                prior = belief @ transitions
                continuation = log_continue
            joint = prior * emissions[:, target]
            total = joint.sum()
            out[j - 1] = continuation + math.log(total)
            belief = joint / total
        return out


@dataclass(frozen=True)
class SyntheticSource:
    """The language as a document source; documents carry token ids, so the tokenizer is the identity."""

    language: SyntheticLanguage
    stream_seed: int = 0

    def describe(self) -> dict:
        return {**self.language.describe(), "stream_seed": self.stream_seed}

    def __iter__(self) -> Iterator[Document]:
        for index, doc in enumerate(self.language.documents(self.stream_seed)):
            yield Document(doc, f"synthetic(seed={self.language.seed})[{index}]")
