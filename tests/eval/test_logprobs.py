"""token_logprobs against a float64 recomputation from the same model's logits, and the cache files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.errors import SlowrunError
from harness.eval.logprobs import load_logprobs, save_logprobs, token_logprobs

VOCAB = 97
SEQ = 12


class TinyCausalLM(torch.nn.Module):
    """Embedding, a causal running mean over past positions, dropout, and an output layer."""

    def __init__(self, vocab: int = VOCAB, dim: int = 16, dropout: float = 0.0):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim)
        self.drop = torch.nn.Dropout(dropout)
        self.out = torch.nn.Linear(dim, vocab)

    def forward(self, idx):
        h = self.embed(idx)
        steps = torch.arange(1, idx.shape[1] + 1, device=idx.device).view(1, -1, 1)
        h = torch.tanh(self.mix(h.cumsum(dim=1) / steps))
        return 3.0 * self.out(self.drop(h))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyCausalLM()


@pytest.fixture
def windows():
    rng = np.random.default_rng(1)
    return rng.integers(0, VOCAB, size=(10, SEQ + 1), dtype=np.uint16)


def reference_logprobs(model, windows):
    """Independent float64 path: full logits for all windows at once, log-softmax in float64, gather."""
    with torch.no_grad():
        tokens = torch.from_numpy(windows.astype(np.int64))
        logits = model.eval()(tokens[:, :-1]).double()
        logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        return logp.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1).numpy()


def test_matches_float64_recomputation(model, windows):
    got = token_logprobs(model, windows, batch_size=3)
    assert got.dtype == np.float32 and got.shape == (10, SEQ)
    expected = reference_logprobs(model, windows)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("batch_size,time_chunk", [(1, None), (4, 5), (10, 1), (64, 3)])
def test_batching_and_time_chunks_do_not_change_the_result(model, windows, batch_size, time_chunk):
    expected = reference_logprobs(model, windows)
    got = token_logprobs(model, windows, batch_size=batch_size, time_chunk=time_chunk)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=0)


def test_runs_in_eval_mode_and_restores_training_mode(windows):
    torch.manual_seed(0)
    model = TinyCausalLM(dropout=0.5).train()
    first = token_logprobs(model, windows, batch_size=4)
    second = token_logprobs(model, windows, batch_size=4)
    np.testing.assert_array_equal(first, second)  # dropout off during scoring
    assert model.training
    np.testing.assert_allclose(first, reference_logprobs(model, windows), rtol=1e-5, atol=0)


def test_accepts_a_memory_mapped_split(model, windows, tmp_path):
    path = tmp_path / "val.bin"
    windows.tofile(path)
    mapped = np.memmap(path, dtype=np.uint16, mode="r", shape=windows.shape)
    np.testing.assert_array_equal(
        token_logprobs(model, mapped, batch_size=4), token_logprobs(model, windows, batch_size=4)
    )


def test_bad_inputs_are_refused(model, windows):
    with pytest.raises(SlowrunError, match="2-D"):
        token_logprobs(model, windows.reshape(-1), batch_size=2)
    with pytest.raises(SlowrunError, match="batch_size"):
        token_logprobs(model, windows, batch_size=0)
    too_big = windows.copy()
    too_big[3, -1] = VOCAB + 4  # a target only, so the model itself never sees it
    with pytest.raises(SlowrunError, match="vocabular"):
        token_logprobs(model, too_big, batch_size=2)

    class NaNModel(torch.nn.Module):
        def forward(self, idx):
            out = torch.zeros(idx.shape[0], idx.shape[1], VOCAB)
            out[:, 2, :] = float("nan")
            return out

    with pytest.raises(SlowrunError, match="non-finite"):
        token_logprobs(NaNModel(), windows, batch_size=4)

    class WrongShape(torch.nn.Module):
        def forward(self, idx):
            return torch.zeros(idx.shape[0], VOCAB)

    with pytest.raises(SlowrunError, match="logits of shape"):
        token_logprobs(WrongShape(), windows, batch_size=4)


def test_cache_round_trip_is_float32_and_memory_mapped(tmp_path):
    data = np.random.default_rng(2).normal(size=(5, 7))  # float64 in, float32 stored
    path = save_logprobs(tmp_path / "sub" / "snap.npy", data)
    loaded = load_logprobs(path)
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, data.astype(np.float32))
    assert [p.name for p in path.parent.iterdir()] == ["snap.npy"]  # no temporary file left behind


def test_overwrite_replaces_whole_file_and_bad_caches_are_refused(tmp_path):
    path = tmp_path / "snap.npy"
    save_logprobs(path, np.zeros((2, 3)))
    save_logprobs(path, -np.ones((4,)))
    np.testing.assert_array_equal(load_logprobs(path), -np.ones(4, dtype=np.float32))
    with pytest.raises(SlowrunError, match="does not exist"):
        load_logprobs(tmp_path / "missing.npy")
    np.save(tmp_path / "f64.npy", np.zeros(3))
    with pytest.raises(SlowrunError, match="float32"):
        load_logprobs(tmp_path / "f64.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(SlowrunError, match="unreadable"):
        load_logprobs(tmp_path / "junk.npy")
