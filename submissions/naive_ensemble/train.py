"""The naive ensemble: independent models averaged uniformly (the recipe is in q0_reference.recipes)."""

from q0_reference.recipes import Recipe, train_naive_ensemble


def main(ctx) -> None:
    train_naive_ensemble(ctx, Recipe.from_hparams(ctx.hparams), members=ctx.hparams["members"],
                         ema_decay=ctx.hparams["ema_decay"], member_min_epochs=ctx.hparams["member_min_epochs"])
