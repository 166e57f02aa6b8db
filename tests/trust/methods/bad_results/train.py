"""A snapshot tag that would escape the snapshot folder is refused; huge but valid ensemble weights are
normalised without overflowing (two weights of 1e308 are one half each)."""

from tests.trust.methods.common import attempt, train_and_snapshot


def main(ctx):
    model = train_and_snapshot(ctx, epochs=0.5, tag="a")
    ctx.save_snapshot(model, "b")
    ctx.log(attempts={"escaping_tag": attempt(lambda: ctx.save_snapshot(model, "../../escaped")),
                      "nan_weight": attempt(lambda: ctx.set_ensemble({"a": float("nan"), "b": 1.0}))})
    ctx.set_ensemble({"a": 1e308, "b": 1e308})
