"""Evaluation held hostage. Every snapshot is evaluated by running its model, and a model that sleeps in
its forward used to hold each snapshot for a fixed 6 hours, outside `--timeout`, for as many snapshots as
it liked. This one trains briefly and hands over eight snapshots whose forward sleeps ten minutes; the
evaluation must end within its limits (`--eval-timeout`, and the rule's limit for each snapshot), with
every snapshot listed as not scored and the reason why. It hands over no graph: the snapshots are run by
their own code, in the worker, where a sleep is possible (a graph has no sleep, and its FLOPs are bounded)."""

import torch
import torch.nn.functional as F

from slowmodel import SlowAtEvaluation


def main(ctx):
    torch.manual_seed(ctx.seed)
    model = SlowAtEvaluation(ctx.vocab_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    stream = ctx.train_stream("main", batch_size=16)
    for i in range(8):
        inputs, targets = next(stream)
        opt.zero_grad()
        F.cross_entropy(model(inputs).reshape(-1, ctx.vocab_size), targets.reshape(-1)).backward()
        opt.step()
        ctx.save_snapshot(model, f"slow{i}", graph=False)  # (its graph would be bounded by FLOPs: this attacks its code)
