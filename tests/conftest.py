"""Shared fixtures: where the read-only real data lives, and skips when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tiny test models run fastest, and most predictably on a shared machine, with one torch thread; the
# variable reaches the method processes the runner starts.
os.environ.setdefault("SLOWRUN_NUM_THREADS", "1")

from harness.common.threads import apply_thread_setting  # noqa: E402

apply_thread_setting()

REPO_ROOT = Path(__file__).resolve().parents[1]
# Test methods build their models from tests/runner/tiny_model.py: the sandboxed method process and the
# evaluation worker may read the test package (code, no data), as a user's --allow-read folder would be.
os.environ.setdefault("SLOWRUN_ALLOW_READ", str(REPO_ROOT / "tests"))
SHARED_DATA = Path(os.environ.get("SLOWRUN_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A path under the shared real-data folder, or skip the test with the reason when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (set SLOWRUN_DATA_ROOT to the shared data folder)")
    return path


@pytest.fixture
def shared_data():
    return shared_path


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """The offline default track, prepared once per test session."""
    from harness.data.prepare import prepare_track
    from harness.rules.tracks import get_track

    out = tmp_path_factory.mktemp("prepared") / "synthetic"
    prepare_track(get_track("synthetic"), out, progress=False)
    return out
