"""Many warm-up batches and a long pause, then one real batch: neither tokens nor time may be counted
for the warm-up."""

import time

import torch
import torch.nn.functional as F

from tests.runner.tiny_model import Bigram


def main(ctx):
    model = Bigram(ctx.vocab_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for inputs, targets in ctx.warmup_batches(200, batch_size=8):
        opt.zero_grad()
        F.cross_entropy(model(inputs).reshape(-1, model.vocab_size), targets.reshape(-1)).backward()
        opt.step()
    time.sleep(2.0)
    model = Bigram(ctx.vocab_size)  # the warm-up weights are thrown away, as a compile warm-up's would be
    ctx.prepare_snapshot(model)  # the forward's export (seconds on a busy machine) is warm-up too
    ctx.log(train_s_before_data=ctx.train_seconds)
    inputs, targets = next(ctx.train_stream("main", batch_size=8))
    ctx.save_snapshot(model, "one-batch")
