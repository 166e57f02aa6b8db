"""Is the held-out test split held out from a submitter?

harness/data/holdout.py: "maintainers prepare it, keep it to themselves". A contiguous split is the next N
tokens of the track's public stream after training, with no input only the maintainers have, so anyone with
the harness and the source prepares the same split (and can check it against the split hash the board
shows). A keyed split (`--test-key`) takes a sample of the documents after training chosen by the
maintainers' secret: a submitter's rebuild, without the key or with a key of their own, matches neither its
tokens nor its split hash, while the maintainers' own re-run with their key gives it again bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data.holdout import prepare_test_split
from harness.rules.tracks import get_track

QUIET = {"test_tokens": 4000, "progress": False, "log": lambda m: None}


@pytest.fixture(autouse=True)
def needs_landlock():
    """(tests/trust's autouse fixture skips without Landlock; nothing here runs a method)"""


def arrays(folder):
    return (np.fromfile(folder / "test.tokens.bin", dtype=np.uint16), (folder / "test.docs.bin").read_bytes())


def test_a_submitter_cannot_prepare_the_maintainers_test_split(synthetic_data, tmp_path):
    track, key = get_track("synthetic"), tmp_path / "private" / "maintainers.key"
    maintainers = prepare_test_split(track, synthetic_data, tmp_path / "maintainers", test_key=key, **QUIET)
    held_tokens, held_docs = arrays(maintainers.folder)
    assert maintainers.manifest["selection"]["kind"] == "keyed"

    # a submitter has the code, the source and the prepared data, but not the key: neither the public
    # (contiguous) rebuild nor one with a key of their own gives the maintainers' tokens or split hash
    public = prepare_test_split(track, synthetic_data, tmp_path / "submitters", **QUIET)
    guessed = prepare_test_split(track, synthetic_data, tmp_path / "guessed", test_key=tmp_path / "submitter.key",
                                 **QUIET)
    for rebuild in (public, guessed):
        tokens, docs = arrays(rebuild.folder)
        assert rebuild.manifest["split_hash"] != maintainers.manifest["split_hash"]
        assert tokens.size == held_tokens.size and not np.array_equal(tokens, held_tokens) and docs != held_docs
        assert rebuild.manifest["split"]["tokens_sha256"] != maintainers.manifest["split"]["tokens_sha256"]

    # the maintainers, with their key, make the same split again, bit for bit, in a fresh folder
    again = prepare_test_split(track, synthetic_data, tmp_path / "maintainers-again", test_key=key, **QUIET)
    assert not again.reused and again.manifest == maintainers.manifest
    tokens, docs = arrays(again.folder)
    assert np.array_equal(tokens, held_tokens) and docs == held_docs
    assert (again.folder / "manifest.json").read_bytes() == (maintainers.folder / "manifest.json").read_bytes()
