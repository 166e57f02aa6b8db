"""Run a snippet in a fresh Python process that enters the sandbox first: Landlock is irreversible, so it
is never applied to the pytest process itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.sandbox import landlock_abi

PRELUDE = """
import json, os, sys
spec = json.loads(sys.argv[1])
from harness.sandbox import SandboxPolicy, base_read_only_paths, default_devices, enter_sandbox
policy = SandboxPolicy(
    read_only=base_read_only_paths() + tuple(spec["read_only"]),
    read_write=tuple(spec["read_write"]),
    devices=default_devices() + tuple(spec["devices"]),
    list_only=tuple(spec["list_only"]),
    max_file_bytes=spec["max_file_bytes"],
)
description = enter_sandbox(policy, required=spec["required"])
results = {}

def attempt(name, fn):
    try:
        results[name] = {"ok": True, "value": fn()}
    except OSError as exc:
        results[name] = {"ok": False, "error": type(exc).__name__, "errno": exc.errno}

def read(path):
    with open(path) as f:
        return f.read()

def write(path, text="x"):
    with open(path, "w") as f:
        f.write(text)
    return len(text)
"""

EPILOGUE = """
print("RESULT " + json.dumps({"sandbox": description, "results": results}), flush=True)
"""


def require_landlock(min_abi: int = 1) -> int:
    abi = landlock_abi()
    if abi == 0:
        pytest.skip("Landlock is unavailable on this kernel (landlock_abi() == 0)")
    if abi < min_abi:
        pytest.skip(f"needs Landlock ABI {min_abi} or later; this kernel has ABI {abi}")
    return abi


def run_sandboxed(body: str, *, cwd: Path, read_only=(), read_write=(), devices=(), list_only=(),
                  max_file_bytes: int | None = 1 << 30, required: bool = False, env: dict[str, str] | None = None,
                  expect_ok: bool = True, timeout: float = 60) -> dict:
    """Run PRELUDE + body + EPILOGUE in a child; its {"sandbox": description, "results": {...}}.

    With expect_ok=False the CompletedProcess is returned instead, for tests of failures."""
    spec = {"read_only": [str(p) for p in read_only], "read_write": [str(p) for p in read_write],
            "devices": [str(p) for p in devices], "list_only": [str(p) for p in list_only],
            "max_file_bytes": max_file_bytes, "required": required}
    child_env = {k: v for k, v in os.environ.items() if k != "SLOWRUN_SANDBOX"}
    child_env.update(env or {})
    code = PRELUDE + textwrap.dedent(body) + EPILOGUE
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], cwd=cwd, env=child_env,
                          capture_output=True, text=True, timeout=timeout)
    if not expect_ok:
        return proc
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"sandboxed child failed (code {proc.returncode}):\n{proc.stderr}"
    return json.loads(lines[-1][len("RESULT "):])


def denied(result: dict) -> bool:
    return not result["ok"] and result["error"] == "PermissionError"
