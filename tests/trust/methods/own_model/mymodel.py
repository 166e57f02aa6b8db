"""A model that exists only in this method directory: a bigram table plus a learned bias."""

import torch
import torch.nn as nn


class BiasedBigram(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.table = nn.Embedding(vocab_size, vocab_size)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, idx):
        return self.table(idx) + self.bias

    def build_spec(self):
        return {"builder": "mymodel:build", "config": {"vocab_size": self.vocab_size}}


def build(config):
    return BiasedBigram(int(config["vocab_size"]))
