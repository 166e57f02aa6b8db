"""q0 as a method directory: everything is in q0_reference; this file only reads the hyperparameters."""

from q0_reference.recipes import Q0Settings, Recipe, train_q0


def main(ctx) -> None:
    train_q0(ctx, Recipe.from_hparams(ctx.hparams), Q0Settings.from_hparams(ctx.hparams))
