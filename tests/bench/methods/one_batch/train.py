"""One batch, one step, one snapshot: what is left of a run's time is the harness starting it and ending it."""

import torch
import torch.nn.functional as F

from tests.runner.tiny_model import Bigram


def main(ctx):
    torch.manual_seed(ctx.seed)
    model = Bigram(ctx.vocab_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    inputs, targets = next(ctx.train_stream("main", batch_size=16))
    F.cross_entropy(model(inputs).reshape(-1, model.vocab_size), targets.reshape(-1)).backward()
    opt.step()
    ctx.save_snapshot(model, "one")
