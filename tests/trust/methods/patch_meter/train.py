"""Disable metering from inside the method's process, then train for four times the budget.

The ledger lives in the data server, so nothing patched here can change the count: the run ends
budget-exceeded with no more than the budget metered."""

import harness.contract
import harness.server.ledger
from tests.trust.methods.common import train_and_snapshot


def main(ctx):
    harness.server.ledger.Ledger.draw = lambda self, *a, **k: None
    harness.server.ledger.Ledger.served_targets = lambda self: 0
    harness.server.ledger.Ledger.reserved_targets = lambda self: 0
    if hasattr(harness.contract, "RunContext"):
        harness.contract.RunContext.remaining_epochs = property(lambda self: 1e9)
    ctx.__dict__.pop("_meter", None)
    train_and_snapshot(ctx, epochs=ctx.budget * 4, tag="greedy")
