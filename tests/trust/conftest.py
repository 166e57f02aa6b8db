"""Adversarial runs need a prepared track and Landlock; without Landlock they are skipped with the reason."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def needs_landlock():
    from harness.sandbox import landlock_abi

    if landlock_abi() < 1:
        pytest.skip("Linux Landlock is not available on this kernel: the method would run unsandboxed")


@pytest.fixture
def make_fitness_method(tmp_path):
    """A method directory declaring `tokens` fitness tokens (it never gets to run if they are refused)."""

    def make(tokens: int):
        folder = tmp_path / f"fitness{tokens}"
        folder.mkdir()
        (folder / "method.toml").write_text(
            '[method]\nname = "greedy_fitness"\nentry = "train:main"\ntracks = ["*"]\n\n'
            f"[fitness]\ntokens = {tokens}\n")
        (folder / "train.py").write_text("def main(ctx):\n    ctx.fitness_windows()\n")
        return folder

    return make
