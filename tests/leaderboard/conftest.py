"""Fixtures shared by the leaderboard tests."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pytest


@pytest.fixture
def method_dir(tmp_path) -> Path:
    """A method folder, with a compiled file its content hash must leave out."""
    folder = tmp_path / "my_method"
    folder.mkdir()
    (folder / "method.toml").write_text('name = "my_method"\nentry = "train:main"\n')
    (folder / "train.py").write_text("def main(ctx):\n    pass\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0junk")
    return folder


@pytest.fixture(params=["file", "memory"])
def storage_base(request, tmp_path) -> str:
    """A fresh place to put files at, on the local disk or in fsspec's in-memory file system (the same code
    serves s3:// and hf://)."""
    if request.param == "file":
        yield (tmp_path / "remote").as_uri()
        return
    url = f"memory://slowrun-test-{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)
