"""Models to export: q0's GPT (the plain cpu_small preset and PR #90's extras at a small size) and the
programs a method could forge."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from harness.graphs.export import GraphExporter


def small_gpts():
    from q0_reference.presets import CPU_SMALL, FINEWEB_PR90

    extras = dataclasses.replace(FINEWEB_PR90.model, n_layer=4, d_model=64, n_head=4, seq_len=32, vocab_size=256)
    plain = dataclasses.replace(CPU_SMALL.model, seq_len=32)
    return {"cpu_small": plain, "pr90_extras": extras}


def export(module, batch: int = 4, seq_len: int = 32) -> tuple[bytes, dict]:
    return GraphExporter().export(module, {"builder": "x:y", "config": {}}, batch, seq_len)


def program_of(data: bytes) -> dict:
    return json.loads(data)


def forged(program: dict) -> bytes:
    return json.dumps(program).encode()


@pytest.fixture
def bigram():
    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(64, 64)

        def forward(self, idx):
            return self.table(idx)

    torch.manual_seed(0)
    return Bigram().eval()
