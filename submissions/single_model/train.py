"""The single-model baseline: one GPT, one stream, warm-up then cosine decay over the whole budget.

Snapshots every `snapshot_every_epochs` give the harness a curve of validation loss against epochs; the
last snapshot is the predictor. The recipe lives in q0_reference.recipes, shared with the naive ensemble.
"""

from q0_reference.recipes import Recipe, train_single


def main(ctx) -> None:
    train_single(ctx, Recipe.from_hparams(ctx.hparams), epochs=ctx.budget, seed=ctx.seed,
                 snapshot_every_epochs=ctx.hparams["snapshot_every_epochs"], resume=ctx.resume_state())
