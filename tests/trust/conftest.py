"""Adversarial runs need a prepared track and Landlock; without Landlock they are skipped with the reason."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def needs_landlock():
    from harness.sandbox import landlock_abi

    if landlock_abi() < 1:
        pytest.skip("Linux Landlock is not available on this kernel: the method would run unsandboxed")
