"""A bigram that trains at full speed and sleeps ten minutes in every forward once it is evaluated."""

import time

import torch.nn as nn


class SlowAtEvaluation(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx):
        if not self.training:
            time.sleep(600)
        return self.table(idx)

    def build_spec(self):
        return {"builder": "slowmodel:build", "config": {"vocab_size": self.vocab_size}}


def build(config):
    return SlowAtEvaluation(int(config["vocab_size"]))
