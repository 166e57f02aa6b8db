"""Triton's kernel cache under Landlock ABI 1 (Linux 5.13 to 5.18), reproduced on a newer kernel.

Triton writes each compiled kernel into a temporary folder below the kernel's cache folder and renames it
one level up. ABI 1 refuses every rename between folders (EXDEV: the REFER right came with ABI 2), so
the first compile in the sandbox failed. The tests apply ABI 1's ruleset (`apply_landlock(as_abi=1)`) in
a fresh process and run a stand-in for Triton's `FileCacheManager` that renames as Triton does (Triton
itself is not installed with the CPU build of torch), then the harness's `SameFolderCacheManager` on top
of it, which the sandbox names in TRITON_CACHE_MANAGER on such kernels.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.sandbox import enter
from harness.sandbox.landlock import landlock_abi

PROJECT = Path(__file__).resolve().parents[2]

# Triton's FileCacheManager as far as its cache folder and its `put` go (triton/runtime/cache.py, 3.x).
FAKE_TRITON_CACHE = '''
import os, uuid

class FileCacheManager:
    def __init__(self, key, override=False, dump=False):
        self.key = key
        self.cache_dir = os.path.join(os.environ["TRITON_CACHE_DIR"], key)
        os.makedirs(self.cache_dir, exist_ok=True)

    def _make_path(self, filename):
        return os.path.join(self.cache_dir, filename)

    def get_file(self, filename):
        path = self._make_path(filename)
        return path if os.path.exists(path) else None

    def put(self, data, filename, binary=True):
        binary = isinstance(data, bytes)
        if not binary:
            data = str(data)
        filepath = self._make_path(filename)
        temp_dir = os.path.join(self.cache_dir, f"tmp.pid_{os.getpid()}_{uuid.uuid4()}")
        os.makedirs(temp_dir, exist_ok=True)
        temp_path = os.path.join(temp_dir, filename)
        with open(temp_path, "wb" if binary else "w") as f:
            f.write(data)
        os.replace(temp_path, filepath)
        os.removedirs(temp_dir)
        return filepath
'''

# In the child: everything imported first, then the ruleset, then one put by each manager.
CHILD = textwrap.dedent('''
    import errno, json, os, sys
    import importlib
    from harness.sandbox.landlock import apply_landlock
    from triton.runtime.cache import FileCacheManager
    module, name = os.environ["MANAGER"].split(":")
    SameFolder = getattr(importlib.import_module(module), name)
    as_abi = int(sys.argv[1])
    apply_landlock(read_only=[], read_write=[os.environ["TRITON_CACHE_DIR"]], as_abi=as_abi)
    result = {}
    for label, manager in (("triton", FileCacheManager("k1")), ("same_folder", SameFolder("k2"))):
        try:
            path = manager.put(b"\\x7fELF kernel", "kernel.cubin")
            result[label] = open(path, "rb").read().decode("latin-1")
        except OSError as exc:
            result[label] = errno.errorcode.get(exc.errno, str(exc.errno))
    result["leftovers"] = sorted(n for k in ("k1", "k2")
                                 for n in os.listdir(os.path.join(os.environ["TRITON_CACHE_DIR"], k))
                                 if n != "kernel.cubin")
    print(json.dumps(result))
''')


def _put_under(tmp_path: Path, as_abi: int) -> dict:
    fake = tmp_path / "fake"
    (fake / "triton" / "runtime").mkdir(parents=True, exist_ok=True)
    (fake / "triton" / "__init__.py").write_text("")
    (fake / "triton" / "runtime" / "__init__.py").write_text("")
    (fake / "triton" / "runtime" / "cache.py").write_text(FAKE_TRITON_CACHE)
    cache = tmp_path / f"cache-abi{as_abi}"
    cache.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{fake}:{PROJECT}", "TRITON_CACHE_DIR": str(cache),
           "MANAGER": enter.TRITON_SAME_FOLDER_CACHE, "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(as_abi)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(landlock_abi() < 2, reason="needs a kernel with Landlock ABI 2 or later to compare with ABI 1")
def test_triton_style_renames_fail_under_abi_1_and_the_same_folder_cache_works(tmp_path):
    old = _put_under(tmp_path, 1)
    assert old["triton"] == "EXDEV"  # Triton's own manager: the failure the first compile hit
    assert old["same_folder"] == "\x7fELF kernel"
    assert len(old["leftovers"]) == 1 and old["leftovers"][0].startswith("tmp.pid_")  # Triton's, left behind
    new = _put_under(tmp_path, landlock_abi())
    assert new == {"triton": "\x7fELF kernel", "same_folder": "\x7fELF kernel", "leftovers": []}


def test_the_sandbox_names_the_same_folder_cache_on_abi_1_only(tmp_path, monkeypatch):
    for abi, expected in ((1, enter.TRITON_SAME_FOLDER_CACHE), (2, None), (7, None), (0, None)):
        monkeypatch.setattr(enter, "probe", lambda abi=abi: (abi, ""))
        env = enter.sandbox_env(tmp_path / f"scratch{abi}")
        assert env.get("TRITON_CACHE_MANAGER") == expected, abi
        assert env["TRITON_CACHE_DIR"] == str((tmp_path / f"scratch{abi}" / "cache" / "triton").resolve())
