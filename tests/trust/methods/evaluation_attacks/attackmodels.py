"""A bigram table with a way to cheat at evaluation, chosen by `attack` in its config.

- `counts`: raises a logit by how often it has seen the window (memory between calls).
- `prefix_memory`: remembers the token that followed every prefix it was shown and raises it later.
- `half_peek`: mixes 0.022 of the next token into its logits and returns float16 (a float16 tolerance
  would have hidden it).
- `custom_op`: routes its logits through an operator of its own library.
- `mutates_buffer`: counts its calls in a buffer and adds the count.
- `impure`: adds noise from torch's generator and the clock, and reads a file, in its forward.
"""

import time

import torch
import torch.nn as nn

_LIB = torch.library.Library("slowrun_attack", "FRAGMENT")
_LIB.define("mark(Tensor x) -> Tensor")
_LIB.impl("mark", lambda x: x.clone(), "CompositeExplicitAutograd")
_LIB.impl("mark", lambda x: torch.empty_like(x), "Meta")


class AttackModel(nn.Module):
    def __init__(self, vocab_size: int, attack: str):
        super().__init__()
        self.vocab_size, self.attack = vocab_size, attack
        self.table = nn.Embedding(vocab_size, vocab_size)
        self.register_buffer("calls", torch.zeros(()), persistent=False)
        self.seen, self.memory = {}, {}

    def build_spec(self):
        return {"builder": "attackmodels:build", "config": {"vocab_size": self.vocab_size, "attack": self.attack}}

    def forward(self, idx):
        logits = self.table(idx)
        if self.training or self.attack == "honest":
            return logits
        return getattr(self, f"_{self.attack}")(idx, logits)

    def _counts(self, idx, logits):
        logits = logits.clone()
        for row, window in enumerate(idx.cpu()):
            key = window.numpy().tobytes()
            logits[row, :, 0] += 3.0 * self.seen.get(key, 0)
            self.seen[key] = self.seen.get(key, 0) + 1
        return logits

    def _prefix_memory(self, idx, logits):
        logits = logits.clone()
        for row, window in enumerate(idx.cpu().tolist()):
            for t in range(len(window)):
                follows = self.memory.get(tuple(window[: t + 1]))
                if follows is not None:
                    logits[row, t, follows] += 5.0
            for t in range(len(window) - 1):
                self.memory[tuple(window[: t + 1])] = window[t + 1]
        return logits

    def _half_peek(self, idx, logits):
        peek = torch.nn.functional.embedding(idx[:, 1:], 0.022 * torch.eye(self.vocab_size, device=idx.device))
        peek = torch.cat([peek, torch.zeros_like(peek[:, :1])], dim=1)
        return (logits + peek).half()

    def _custom_op(self, idx, logits):
        return torch.ops.slowrun_attack.mark(logits)

    def _mutates_buffer(self, idx, logits):
        self.calls.add_(1.0)
        return logits + self.calls - 1.0

    def _impure(self, idx, logits):
        with open("/etc/hostname", "rb") as handle:
            salt = len(handle.read()) * 1e-4
        return logits + 1e-3 * torch.rand_like(logits) + (time.time() % 1.0) * 1e-3 + salt


def build(config):
    return AttackModel(int(config["vocab_size"]), str(config["attack"]))
