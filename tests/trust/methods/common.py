"""What the adversarial methods share: an honest little training loop to run after (or around) the attack,
and a way to report what an attempt did without trusting anything the method writes to disk."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.runner.tiny_model import Bigram


def train_and_snapshot(ctx, epochs: float = 1.0, tag: str = "honest") -> Bigram:
    torch.manual_seed(ctx.seed)
    model = Bigram(ctx.vocab_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    alone = ctx.world_size == 1  # in a distributed run every rank trains its own stream and snapshot
    stream = ctx.train_stream("main" if alone else f"main-r{ctx.rank}", batch_size=16)
    # every rank may draw once between its check and its batch: leave room for one batch of each
    while ctx.epochs + ctx.world_size * 16 * ctx.seq_len / ctx.epoch_tokens <= epochs:
        inputs, targets = next(stream)
        opt.zero_grad()
        loss = F.cross_entropy(model(inputs).reshape(-1, model.vocab_size), targets.reshape(-1))
        loss.backward()
        opt.step()
    ctx.save_snapshot(model, tag if alone else f"{tag}-r{ctx.rank}")
    return model


def attempt(action) -> str:
    """'allowed' or the name of the error that stopped it."""
    try:
        action()
        return "allowed"
    except Exception as exc:  # noqa: BLE001 - the attempt's outcome is the point
        return type(exc).__name__
