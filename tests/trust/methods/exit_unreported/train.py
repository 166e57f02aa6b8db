"""Leave without reporting: a method that exits 0 behind the harness's back must not end up `ok`."""

import os

from tests.trust.methods.common import train_and_snapshot


def main(ctx):
    train_and_snapshot(ctx)
    os._exit(0)
