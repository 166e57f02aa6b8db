"""The harness side's own checks: finiteness of logits and the weights' hash, without a worker."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from harness.eval.remote_model import InvalidSnapshot, all_finite, read_weights
from harness.formats.snapshots import WEIGHTS
from tests.eval_worker.conftest import add_snapshot, causal_model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [(0, 0, 0), (3, 17, 200), (-1, -1, -1)])
def test_any_single_non_finite_logit_is_caught(dtype, bad, where):
    logits = torch.randn(4, 32, 256).to(dtype)
    assert all_finite(logits)
    logits[where] = bad
    assert not all_finite(logits)


def test_large_but_finite_logits_are_finite():
    logits = torch.full((2, 3, 5), torch.finfo(torch.float32).max)
    logits[0, 0, 0] = torch.finfo(torch.float32).min
    assert all_finite(logits) and all_finite(torch.empty(0, 3, 5))


def test_weights_are_read_with_their_hash_and_checked_against_the_stamp(run_dir, method_dir):
    snap = add_snapshot(run_dir, "a", causal_model(1))
    raw = (snap.folder / WEIGHTS).read_bytes()
    data, digest = read_weights(snap)
    assert data == raw and digest == hashlib.sha256(raw).hexdigest()
    assert read_weights(dataclasses.replace(snap, weights_sha256=digest.upper()))[1] == digest
    with pytest.raises(InvalidSnapshot, match=f"hashes to {digest}, but the snapshot was taken in with f00"):
        read_weights(dataclasses.replace(snap, weights_sha256="f00"))
    (snap.folder / WEIGHTS).unlink()
    with pytest.raises(InvalidSnapshot, match="cannot read the weights"):
        read_weights(snap)
