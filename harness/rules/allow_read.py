"""The folders a run's method may read besides its own directory, where its snapshots' builders may live.

They come from ``--allow-read`` and from ``$SLOWRUN_ALLOW_READ`` (os.pathsep-separated; the test suite
uses it to let methods under ``tests/`` import their helpers). The runner, the entry check, verification
and evaluation all read the variable here, so one rule holds in every process."""

from __future__ import annotations

import os

ALLOW_READ_ENV = "SLOWRUN_ALLOW_READ"


def env_allow_read() -> list[str]:
    """The folders in ``$SLOWRUN_ALLOW_READ``, in order (empty entries dropped)."""
    return [p for p in os.environ.get(ALLOW_READ_ENV, "").split(os.pathsep) if p]
