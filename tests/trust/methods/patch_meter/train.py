"""Disable metering from inside the method's process, then train for four times the budget.

The meter lives in the data server, so nothing patched here can change the count: the run ends
budget-exceeded with no more than the budget metered."""

import harness.contract
import harness.meter
from tests.trust.methods.common import train_and_snapshot


def main(ctx):
    harness.meter.Meter.charge = lambda self, *a, **k: None
    harness.meter.Meter.total_targets = property(lambda self: 0)
    if hasattr(harness.contract, "RunContext"):
        harness.contract.RunContext.remaining_epochs = property(lambda self: 1e9)
    ctx.__dict__.pop("_meter", None)
    train_and_snapshot(ctx, epochs=ctx.budget * 4, tag="greedy")
