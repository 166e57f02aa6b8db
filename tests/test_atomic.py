"""harness.common.atomic: a reader sees the old file or the whole new one; nothing is left behind on failure."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from harness.common.atomic import atomic_output, write_json_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "run.json"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_output(target, "w") as handle:
            handle.write("half of the new")
            raise RuntimeError("the writer died")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_json_is_finite_sorted_and_newline_terminated_and_private(tmp_path):
    target = write_json_atomic(tmp_path / "sub" / "a.json", {"b": 1, "a": [1.5]})
    assert target.read_text() == json.dumps({"a": [1.5], "b": 1}, indent=2) + "\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600  # a token written this way is readable by its owner only
    with pytest.raises(ValueError):
        write_json_atomic(target, {"loss": float("nan")})
    assert json.loads(target.read_text()) == {"a": [1.5], "b": 1}  # the refused write touched nothing


def test_binary_writers_go_through_the_same_rule(tmp_path):
    target = tmp_path / "cache.npy"
    with atomic_output(target) as handle:
        np.save(handle, np.arange(4, dtype=np.float32))
    assert np.array_equal(np.load(target), np.arange(4, dtype=np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.npy"]
