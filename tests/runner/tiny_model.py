"""A bigram model small enough that harness tests train it in a second; rebuilt from its build spec."""

from __future__ import annotations

import torch
import torch.nn as nn


class Bigram(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.table = nn.Embedding(vocab_size, vocab_size)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)

    def build_spec(self) -> dict:
        return {"builder": "tests.runner.tiny_model:build_bigram", "config": {"vocab_size": self.vocab_size}}


def build_bigram(config: dict) -> Bigram:
    return Bigram(int(config["vocab_size"]))
