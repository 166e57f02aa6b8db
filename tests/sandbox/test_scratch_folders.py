"""The folders the harness makes in a method's scratch for each session follow no link the method left."""

from __future__ import annotations

import os

from harness.sandbox.enter import make_folders_beneath, sandbox_env


def test_links_and_files_where_folders_belong_are_replaced_not_followed(tmp_path):
    scratch, outside = tmp_path / "scratch", tmp_path / "outside"
    scratch.mkdir()
    outside.mkdir()
    os.symlink(outside, scratch / "cache")  # a link to a folder
    os.symlink(outside / "missing", scratch / "tmp")  # a dangling link
    (scratch / "file-not-folder").write_text("x")
    make_folders_beneath(scratch, "cache/torchinductor")
    make_folders_beneath(scratch, "tmp")
    make_folders_beneath(scratch, "file-not-folder/below")
    assert list(outside.iterdir()) == []
    for folder in ("cache", "cache/torchinductor", "tmp", "file-not-folder/below"):
        assert (scratch / folder).is_dir() and not (scratch / folder).is_symlink(), folder


def test_sandbox_env_makes_its_folders_through_no_link(tmp_path):
    scratch, outside = tmp_path / "scratch", tmp_path / "outside"
    scratch.mkdir()
    outside.mkdir()
    os.symlink(outside, scratch / "cache")
    env = sandbox_env(scratch)
    assert list(outside.iterdir()) == []
    assert os.path.isdir(env["TORCHINDUCTOR_CACHE_DIR"]) and not (scratch / "cache").is_symlink()
    assert env["HOME"] == str(scratch.resolve())
