"""Evaluation attacked by the model's own code. The harness used to run every snapshot's Python at
evaluation, so a model could remember, peek through a loose tolerance, or be impure; each attack here
must now be refused (a probe, or the graph check) or score exactly its weights' honest loss."""

import torch
import torch.nn.functional as F

from attackmodels import AttackModel


def main(ctx):
    torch.manual_seed(ctx.seed)
    model = AttackModel(ctx.vocab_size, ctx.hparams["attack"])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    stream = ctx.train_stream("main", batch_size=16)
    while ctx.epochs + 16 * ctx.seq_len / ctx.epoch_tokens <= 1.0:
        inputs, targets = next(stream)
        opt.zero_grad()
        F.cross_entropy(model(inputs).reshape(-1, ctx.vocab_size), targets.reshape(-1)).backward()
        opt.step()
    ctx.save_snapshot(model, "attack")
