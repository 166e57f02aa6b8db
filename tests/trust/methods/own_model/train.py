"""Train the method's own architecture; evaluation must rebuild it from `mymodel:build`."""

import torch
import torch.nn.functional as F

from mymodel import BiasedBigram


def main(ctx):
    torch.manual_seed(ctx.seed)
    model = BiasedBigram(ctx.vocab_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    stream = ctx.train_stream("main", batch_size=16)
    while ctx.remaining_epochs * ctx.epoch_tokens >= 16 * ctx.seq_len:
        inputs, targets = next(stream)
        opt.zero_grad()
        F.cross_entropy(model(inputs).reshape(-1, ctx.vocab_size), targets.reshape(-1)).backward()
        opt.step()
    ctx.save_snapshot(model, "own")
