"""A tiny GPT and a tiny byte-level BPE, plus an independent float64 scorer to check the LM adapter against."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.data.tokenizers import ByteBpeTokenizer
from q0_reference.model import build_gpt

SENTENCES = [
    "Question: Which gas do plants take in from the air?\nAnswer: carbon dioxide",
    "Question: What force pulls objects toward the ground?\nAnswer: gravity",
    "The water cycle moves water between the oceans, the air and the land.",
    "To open a stuck jar lid, run it under hot water for a minute.",
    "Metals conduct heat and electricity better than wood or plastic.",
    "A balanced diet includes fruit, vegetables, grains and protein.",
]
SEQ_LEN = 24


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """These models are tiny: on a shared 2-core machine a second intra-op thread only waits for the
    first (measured: 25 s instead of 1 s for this folder under load), and no result depends on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer():
    return ByteBpeTokenizer.train(SENTENCES * 4, 300)


def make_model(vocab_size: int, seed: int, seq_len: int = SEQ_LEN):
    torch.manual_seed(seed)
    model = build_gpt({"vocab_size": vocab_size, "seq_len": seq_len, "n_layer": 2, "n_head": 2, "d_model": 32,
                       "padded_vocab_multiple": 8})
    # Sharper than the default head so the members disagree and greedy choices are not ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    return model.eval()


@pytest.fixture(scope="session")
def model(tokenizer):
    return make_model(tokenizer.vocab_size, seed=1)


@pytest.fixture(scope="session")
def other_model(tokenizer):
    return make_model(tokenizer.vocab_size, seed=2)


def next_token_probs(model, inputs: list[int]) -> np.ndarray:
    """float64 next-token probabilities after every input position: [len(inputs), V]."""
    with torch.no_grad():
        logits = model(torch.tensor([inputs], dtype=torch.long))[0].to(torch.float64).numpy()
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    return probs / probs.sum(axis=1, keepdims=True)


def window_score(models, weights, context: list[int], continuation: list[int], seq_len: int):
    """log p(continuation | context) and greedy flag of the probability mixture, from scratch in float64,
    for a continuation that fits the window: the inputs are the last seq_len tokens before its last token."""
    assert 1 <= len(continuation) <= seq_len
    window = (context + continuation)[-(seq_len + 1):]
    inputs = window[:-1]
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    mixed = sum(wi * next_token_probs(m, inputs) for wi, m in zip(w, models))
    rows = mixed[len(inputs) - len(continuation):]
    total = float(np.sum(np.log(rows[np.arange(len(continuation)), continuation])))
    greedy = bool(np.all(rows.argmax(axis=1) == np.asarray(continuation)))
    return total, greedy


def brute_force_score(models, weights, context: list[int], continuation: list[int], seq_len: int):
    """As window_score; a continuation longer than seq_len is split into consecutive pieces of seq_len
    tokens, each scored after everything before it (cut to the window)."""
    total, greedy = 0.0, True
    for start in range(0, len(continuation), seq_len):
        piece_total, piece_greedy = window_score(models, weights, context + continuation[:start],
                                                 continuation[start : start + seq_len], seq_len)
        total += piece_total
        greedy = greedy and piece_greedy
    return total, greedy


def greedy_continuation(models, weights, context: list[int], length: int) -> list[int]:
    """The mixture's greedy continuation of ``context`` (brute force), for requests that must be greedy."""
    ids = list(context)
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    for _ in range(length):
        mixed = sum(wi * next_token_probs(m, ids)[-1] for wi, m in zip(w, models))
        ids.append(int(mixed.argmax()))
    return ids[len(context):]


def token_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """BOS-prefixed context ids and continuation ids: the pair is encoded whole and split after the context
    (trailing spaces of the context belong to the continuation); an empty context is BOS alone."""
    bos = tokenizer.bos_id
    if context == "":
        return [bos], tokenizer.encode_batch([continuation])[0]
    stripped = context.rstrip()
    context_ids = [bos] + tokenizer.encode_batch([stripped])[0]
    whole = [bos] + tokenizer.encode_batch([context + continuation])[0]
    return context_ids, whole[len(context_ids):]
