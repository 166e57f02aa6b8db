"""Triton's kernel cache with every file renamed into place inside its own folder (Landlock ABI 1).

Triton's `FileCacheManager.put` writes each compiled kernel into a temporary folder below the kernel's
cache folder and renames it one level up. Under Landlock, a rename into another folder needs the REFER
right, which only ABI 2 (Linux 5.19) added; on ABI 1 (Linux 5.13 to 5.18) every such rename is refused
with EXDEV, so the first `torch.compile` in the sandbox failed on its first kernel. This manager writes
the temporary file beside the final one (a hidden name `get_file` never matches) and renames it within
the folder, which every Landlock ABI allows; readers still see a file either whole or absent.

The sandbox points `TRITON_CACHE_MANAGER` here only on an ABI 1 kernel (`harness.sandbox.enter`), so
Triton's own manager runs everywhere else. Triton imports this module itself, in the method's process;
nothing in the harness imports it.
"""

from __future__ import annotations

import os
import secrets

from triton.runtime.cache import FileCacheManager


class SameFolderCacheManager(FileCacheManager):
    def put(self, data, filename, binary=True) -> str:
        if not self.cache_dir:
            raise RuntimeError("Triton's cache folder could not be created or found")
        binary = isinstance(data, bytes)
        if not binary:
            data = str(data)
        path = self._make_path(filename)
        temporary = os.path.join(os.path.dirname(path), f".tmp.{os.getpid()}.{secrets.token_hex(6)}.{filename}")
        with open(temporary, "wb" if binary else "w") as handle:
            handle.write(data)
        os.replace(temporary, path)
        return path
