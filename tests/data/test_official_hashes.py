"""The official data table against what preparing the built-in tracks gives today: it can never drift."""

from __future__ import annotations

import pytest

from harness.data.prepare import prepare_track
from harness.rules.official_hashes import KNOWN_FLOORS, OFFICIAL_DATA_HASHES, official_hashes
from harness.rules.tracks import BUILTIN_TRACKS
from tests.conftest import shared_path


def prepared_manifest(name: str, tmp_path) -> dict:
    return prepare_track(BUILTIN_TRACKS[name], tmp_path / name, progress=False, log=lambda _: None).manifest


def test_every_builtin_track_has_an_entry():
    """A new built-in track must come with a decision: its official hash, or an empty set saying why."""
    assert set(OFFICIAL_DATA_HASHES) == set(BUILTIN_TRACKS)


def test_synthetic_hash_and_floor_are_what_preparation_gives(tmp_path):
    manifest = prepared_manifest("synthetic", tmp_path)
    assert OFFICIAL_DATA_HASHES["synthetic"] == {manifest["data_hash"]}
    # the floor is the true language's loss on these very validation windows
    assert KNOWN_FLOORS["synthetic"] == pytest.approx(manifest["best_val_loss"], rel=1e-12, abs=0)


def test_webtext_hash_is_what_preparation_gives(tmp_path):
    shared_path("webtext")  # skips, saying why, without the shared WebText files
    manifest = prepared_manifest("webtext", tmp_path)
    assert OFFICIAL_DATA_HASHES["webtext"] == {manifest["data_hash"]}
    assert "best_val_loss" not in manifest and "webtext" not in KNOWN_FLOORS  # real text: no known floor


def test_fineweb_is_not_checked_until_its_hash_is_imported():
    assert OFFICIAL_DATA_HASHES["fineweb"] == frozenset()
    assert official_hashes("fineweb") is None
    assert official_hashes("no-such-track") is None
    assert official_hashes("synthetic") == OFFICIAL_DATA_HASHES["synthetic"]
