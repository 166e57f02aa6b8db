"""Adversarial runs need a prepared track and Landlock; without Landlock they are skipped with the reason."""

from __future__ import annotations

from pathlib import Path

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


@pytest.fixture
def needs_namespaces():
    """Skip, with the kernel's reason, where the supervisor cannot give the method a network and a PID
    namespace of its own (the test would only see the host's)."""
    import subprocess
    import sys

    from harness.sandbox import supervise

    code = ("import sys; sys.path.insert(0, sys.argv[1]); from supervise import private_network, private_pids; "
            "print(private_network() or private_pids() or '')")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(Path(supervise.__file__).parent)],
                         capture_output=True, text=True)
    reason = out.stdout.strip() or (out.stderr.strip() if out.returncode else "")
    if reason:
        pytest.skip(f"no private namespaces here: {reason}")
