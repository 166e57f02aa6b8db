"""The official prepared data of the built-in tracks: their data hashes, and the loss floors they imply.

The leaderboard accepts a record on a track listed here only when the record's data hash is one of the
track's official hashes, so a run on other data, or on hand-edited data, cannot join under the track's
name. The hashes are what `slowrun prepare --track NAME` gives (the manifest's `data_hash`);
tests/data/test_official_hashes.py prepares each offline track again and compares, so this table cannot
drift from the preparation code without a failing test. A track whose set is empty is not checked here
(the board falls back to the hashes of the records it already holds).

For fineweb the hash comes from slowrun's own files: `slowrun prepare --track fineweb --from-slowrun DIR`
imports the published `fineweb_val.pt` and `fineweb_train.pt` (their sha256 checked against
`prepare_data.py`'s pins) into the very arrays streamed preparation writes, and prints the data hash
that belongs here (harness.data.slowrun_files; tests/data/test_slowrun_files.py proves import and
streaming agree). Slowrun's older chunked files dropped each split's last partial sequence, so their
import is other data with another hash, and does not belong here.

A floor is the lowest validation loss any model can reach on a track's official data: below it a record
is not a better method but a broken or leaked evaluation. Only the synthetic track has one, because its
true next-token probabilities are known; it is the manifest's `best_val_loss` of the official data.
"""

from __future__ import annotations

from typing import Mapping

OFFICIAL_DATA_HASHES: Mapping[str, frozenset[str]] = {
    # Empty until someone imports slowrun's published (current-layout) files and lists the data hash the
    # import prints: until then fineweb records are checked against the hashes already on the board.
    "fineweb": frozenset(),
    "synthetic": frozenset({"1a9a8fd7bf3f017004ddd833eb370eb8e9b308a77dd3b52cbb8f4f4cf63b68a0"}),
    # From the WebText files in the shared data folder (webtext.test.jsonl, webtext.valid.jsonl).
    "webtext": frozenset({"1ccf60ba89c260c78f1405df3d71124ae3266501d56b560ef3d4fde2201645d0"}),
}

KNOWN_FLOORS: Mapping[str, float] = {
    "synthetic": 2.137045831167619,  # nats/token on the validation windows of the official synthetic data
}


def official_hashes(track: str) -> frozenset[str] | None:
    """The official data hashes of `track`, or None when the track has none on record (not checked)."""
    hashes = OFFICIAL_DATA_HASHES.get(track)
    return hashes or None
