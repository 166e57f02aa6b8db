"""A slow training loop for the time-cap tests: each step sleeps, so a few seconds of cap hold a few steps."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from harness.contract import TimeExhausted
from tests.runner.tiny_model import Bigram

STEP_S = 0.1


def train_until_the_cap(ctx, snapshot_every: int = 5) -> Bigram:
    """Train one slow step at a time, with a snapshot every few steps, until the server refuses a batch."""
    torch.manual_seed(ctx.seed)
    model = Bigram(ctx.vocab_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    # The forward is exported before the clock starts, as q0 does: the first snapshot would otherwise pay for
    # the export (seconds on a busy machine) inside a 2 s cap and its grace.
    ctx.prepare_snapshot(model)
    stream = ctx.train_stream("main", batch_size=4)
    step = 0
    try:
        while True:
            inputs, targets = next(stream)
            opt.zero_grad()
            F.cross_entropy(model(inputs).reshape(-1, model.vocab_size), targets.reshape(-1)).backward()
            opt.step()
            time.sleep(STEP_S)
            step += 1
            if step % snapshot_every == 0:
                ctx.save_snapshot(model, f"step{step}", meta={"step": step})
    except TimeExhausted:
        pass
    return model
