"""The held-out test split (`slowrun prepare --test-split`): the stream's next tokens after training.

Expected tokens are rebuilt independently of the preparation code: the source's documents are read
directly (the synthetic language's generator, the WebText JSON lines), the ones the prepared splits hold are
skipped by the manifest's document counts, and the rest are BOS-prefixed and concatenated up to the budget.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.data.holdout import (TEST_FORMAT, compute_split_hash, open_test_split, prepare_test_split,
                                  read_test_manifest, verify_test_split)
from harness.data.manifest import read_manifest
from harness.data.prepare import prepare_track
from harness.data.synthetic import SyntheticLanguage
from harness.data.tokenizers import ByteBpeTokenizer
from harness.errors import DataError
from harness.rules.tracks import BUILTIN_TRACKS, TokenizerSpec
from tests.conftest import shared_path
from tests.data.helpers import local_track
from tests.data.test_bad_input import write_docs

QUIET = {"progress": False, "log": lambda _: None}


def snapshot(folder: Path) -> dict:
    """Every file's bytes and modification time: what "untouched" means."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def expected_split(documents, skip: int, budget: int, bos: int) -> tuple[np.ndarray, list[int], bool]:
    """(tokens, document starts, last truncated) of the split after the first `skip` documents."""
    tokens, starts = [], []
    for index, ids in enumerate(documents):
        if index < skip:
            continue
        starts.append(len(tokens))
        piece = [bos, *map(int, ids)]
        room = budget - len(tokens)
        tokens += piece[:room]
        if len(tokens) == budget:
            return np.array(tokens), starts, len(piece) > room
    raise AssertionError("the source ran out")


def test_synthetic_test_split_continues_the_stream_after_training(synthetic_data, tmp_path):
    before = snapshot(synthetic_data)
    result = prepare_test_split(BUILTIN_TRACKS["synthetic"], synthetic_data, tmp_path / "test", **QUIET)
    assert snapshot(synthetic_data) == before  # the prepared folder is only read
    prepared, manifest = read_manifest(synthetic_data), result.manifest
    val, train = prepared["splits"]["val"], prepared["splits"]["train"]
    skip = val["documents"] + train["documents"]

    language = SyntheticLanguage()
    tokens, starts, truncated = expected_split(language.documents(0), skip, val["tokens"], language.bos_id)
    written = np.fromfile(tmp_path / "test" / "test.tokens.bin", dtype=np.uint16)
    assert written.size == val["tokens"] == 32_768  # default: the validation split's size
    assert np.array_equal(written, tokens)
    assert np.array_equal(np.fromfile(tmp_path / "test" / "test.docs.bin", dtype=np.int64), starts)

    split = manifest["split"]
    assert manifest["format"] == TEST_FORMAT and manifest["track"]["name"] == "synthetic"
    assert split["tokens_sha256"] == hashlib.sha256(tokens.astype("<u2").tobytes()).hexdigest()
    assert split["documents"] == len(starts) and split["last_truncated"] is truncated
    # no document in two splits: training ends with document skip - 1, the test split starts with document skip
    assert train["last_document"] == f"synthetic(seed=0)[{skip - 1}]" == manifest["follows"]["last_document"]
    assert split["first_document"] == f"synthetic(seed=0)[{skip}]" and split["first_document_index"] == skip
    assert manifest["follows"] == {"data_hash": prepared["data_hash"], "documents": skip,
                                   "tokens": val["tokens"] + train["tokens"], "last_document": train["last_document"]}
    assert split["windows"] == 32_768 // 129 == 254 and split["targets"] == 254 * 128
    assert manifest["tokenizer"]["hash"] == prepared["tokenizer"]["hash"]
    assert manifest["split_hash"] == compute_split_hash(manifest) and verify_test_split(tmp_path / "test") == []
    # the true language's loss on the test windows: a floor like the validation split's, from its own tokens
    logp = language.true_logprobs(tokens)
    positions = (np.arange(254)[:, None] * 129 + np.arange(1, 129)[None, :]).reshape(-1)
    assert manifest["best_loss"] == pytest.approx(float(-logp[positions - 1].mean()), rel=1e-12)


def test_the_size_is_asked_for_and_refused_below_two_windows(synthetic_data, tmp_path):
    result = prepare_test_split(BUILTIN_TRACKS["synthetic"], synthetic_data, tmp_path / "small", test_tokens=1000,
                                **QUIET)
    default = np.fromfile(prepare_test_split(BUILTIN_TRACKS["synthetic"], synthetic_data, tmp_path / "default",
                                             **QUIET).folder / "test.tokens.bin", dtype=np.uint16)
    small = np.fromfile(result.folder / "test.tokens.bin", dtype=np.uint16)
    assert small.size == 1000 and np.array_equal(small, default[:1000])  # the same stream, cut earlier
    assert result.manifest["split"]["windows"] == 7 and result.manifest["split_hash"] != compute_split_hash(
        read_test_manifest(tmp_path / "default"))
    with pytest.raises(DataError, match="at least two windows"):
        prepare_test_split(BUILTIN_TRACKS["synthetic"], synthetic_data, tmp_path / "tiny", test_tokens=257, **QUIET)
    assert not (tmp_path / "tiny").exists()


def test_a_short_source_is_refused_with_the_most_it_can_give(tmp_path):
    docs = write_docs(tmp_path / "docs.jsonl", 300)
    track = local_track([docs], seq_len=32)
    prepare_track(track, tmp_path / "prepared", progress=False, log=lambda _: None)
    with pytest.raises(DataError, match="ran out") as refused:
        prepare_test_split(track, tmp_path / "prepared", tmp_path / "test", test_tokens=10**6, **QUIET)
    assert not (tmp_path / "test").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".test.")] == []
    most = int(str(refused.value).split("at most ")[1].split(" tokens")[0].replace(",", ""))
    assert 0 < most < 10**6
    # the number it names is exactly what is left: asking for it works, one more does not
    assert prepare_test_split(track, tmp_path / "prepared", tmp_path / "test", test_tokens=most,
                              **QUIET).manifest["split"]["tokens"] == most
    with pytest.raises(DataError, match="ran out"):
        prepare_test_split(track, tmp_path / "prepared", tmp_path / "more", test_tokens=most + 1, **QUIET)


def test_refusals_leave_everything_as_it_was(synthetic_data, tmp_path):
    track = BUILTIN_TRACKS["synthetic"]
    before = snapshot(synthetic_data)
    with pytest.raises(DataError, match="inside the prepared folder"):
        prepare_test_split(track, synthetic_data, synthetic_data / "test", **QUIET)
    with pytest.raises(DataError, match="inside the prepared folder"):
        prepare_test_split(track, synthetic_data, synthetic_data, force=True, **QUIET)
    with pytest.raises(DataError, match="holds the prepared folder"):
        prepare_test_split(track, synthetic_data, synthetic_data.parent, force=True, **QUIET)
    with pytest.raises(DataError, match="holds track 'synthetic', not 'webtext'"):
        prepare_test_split(BUILTIN_TRACKS["webtext"], synthetic_data, tmp_path / "t", **QUIET)
    with pytest.raises(DataError, match="not a prepared track"):
        prepare_test_split(track, tmp_path / "nothing", tmp_path / "t", **QUIET)
    assert snapshot(synthetic_data) == before and not (tmp_path / "t").exists()

    # an output folder that holds something else is never replaced without --force
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not a test split"):
        prepare_test_split(track, synthetic_data, other, **QUIET)
    assert (other / "keep.txt").read_text() == "mine"
    # the same test split again is kept as it is; another size is refused without --force
    first = prepare_test_split(track, synthetic_data, tmp_path / "test", **QUIET)
    again = prepare_test_split(track, synthetic_data, tmp_path / "test", **QUIET)
    assert again.reused and again.manifest == first.manifest
    with pytest.raises(DataError, match=r"already holds something else \(test split "):
        prepare_test_split(track, synthetic_data, tmp_path / "test", test_tokens=1000, **QUIET)
    replaced = prepare_test_split(track, synthetic_data, tmp_path / "test", test_tokens=1000, force=True, **QUIET)
    assert replaced.manifest["split"]["tokens"] == 1000 and not replaced.reused


def test_a_source_that_does_not_give_the_prepared_splits_is_refused(tmp_path):
    track = local_track([write_docs(tmp_path / "a.jsonl", 300)], seq_len=32)
    prepare_track(track, tmp_path / "prepared", progress=False, log=lambda _: None)
    shifted = tmp_path / "b.jsonl"  # the same documents, one dropped from the front
    shifted.write_text("".join((tmp_path / "a.jsonl").read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(DataError, match="not the data that folder was prepared from"):
        prepare_test_split(track, tmp_path / "prepared", tmp_path / "test", source_override=[str(shifted)], **QUIET)
    assert not (tmp_path / "test").exists()


def test_damage_is_found_and_a_prepared_folder_is_not_a_test_split(synthetic_data, tmp_path, capsys):
    prepare_test_split(BUILTIN_TRACKS["synthetic"], synthetic_data, tmp_path / "test", test_tokens=1000, **QUIET)
    with pytest.raises(DataError, match="a prepared track's folder, not a test split"):
        open_test_split(synthetic_data)
    assert main(["data", "info", str(tmp_path / "test")]) == 0  # `slowrun data info` reads a test split too
    assert "verification ok" in capsys.readouterr().out
    tokens = tmp_path / "test" / "test.tokens.bin"
    raw = bytearray(tokens.read_bytes())
    raw[10] ^= 1
    tokens.write_bytes(bytes(raw))
    assert any("sha256" in p for p in verify_test_split(tmp_path / "test"))
    assert main(["data", "info", str(tmp_path / "test")]) == 1
    assert "verification FAILED" in capsys.readouterr().out
    with pytest.raises(DataError, match="damaged"):
        open_test_split(tmp_path / "test")


def test_cli_prepares_a_webtext_test_split_tokenized_as_the_track(tmp_path, capsys):
    root = shared_path("webtext")  # skips, saying why, without the shared WebText files
    prepared, test = tmp_path / "webtext", tmp_path / "webtext-test"
    assert main(["prepare", "--track", "webtext", "--out", str(prepared), "--quiet"]) == 0
    before = snapshot(prepared)
    assert main(["prepare", "--track", "webtext", "--out", str(prepared), "--test-split", str(test), "--quiet"]) == 0
    assert snapshot(prepared) == before
    assert str(test) in capsys.readouterr().out

    manifest, prepared_manifest = read_test_manifest(test), read_manifest(prepared)
    skip = manifest["follows"]["documents"]
    assert skip == prepared_manifest["splits"]["val"]["documents"] + prepared_manifest["splits"]["train"]["documents"]
    # the documents, read straight from the files in the track's order, encoded by the prepared tokenizer
    files = sorted(root.glob("webtext.*.jsonl"))
    lines = [(path, number, json.loads(line)["text"]) for path in files
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
    assert manifest["split"]["first_document"] == f"{lines[skip][0]}:{lines[skip][1]}"
    tokenizer = ByteBpeTokenizer.load(prepared)
    needed = lines[skip:skip + 2000]  # far more than 60,000 tokens of WebText
    tokens, starts, truncated = expected_split(tokenizer.encode_batch([text for _, _, text in needed]), 0, 60_000,
                                               tokenizer.bos_id)
    assert manifest["split"]["tokens"] == 60_000  # the validation split's size
    assert np.array_equal(np.fromfile(test / "test.tokens.bin", dtype=np.uint16), tokens)
    assert np.array_equal(np.fromfile(test / "test.docs.bin", dtype=np.int64), starts)
    assert manifest["split"]["last_truncated"] is truncated
    last = needed[len(starts) - 1]
    assert manifest["split"]["last_document"] == f"{last[0]}:{last[1]}"
    assert manifest["split"]["windows"] == math.floor(60_000 / 129)

    assert main(["prepare", "--track", "webtext", "--test-tokens", "500", "--quiet"]) == 2
    assert "--test-split" in capsys.readouterr().err


def test_a_gpt2_track_continues_through_the_same_code_path(tmp_path):
    """fineweb's tokenizer on local WebText files: the test split equals tiktoken's own re-tokenization."""
    from tests.data.test_gpt2_prepare import _reference_splits

    ranks = shared_path("gpt2", "r50k_base.tiktoken")
    files = sorted(shared_path("webtext").glob("webtext.*.jsonl"))
    track = local_track(files, val_tokens=20_000, train_tokens=40_000, seq_len=64,
                        tokenizer=TokenizerSpec(kind="gpt2", ranks_path=str(ranks)))
    prepare_track(track, tmp_path / "prepared", progress=False, log=lambda _: None)
    result = prepare_test_split(track, tmp_path / "prepared", tmp_path / "test", test_tokens=30_000, **QUIET)
    tokens, starts = _reference_splits(files, (20_000, 40_000, 30_000))[2]
    assert np.array_equal(np.fromfile(tmp_path / "test" / "test.tokens.bin", dtype=np.uint16), tokens)
    assert np.array_equal(np.fromfile(tmp_path / "test" / "test.docs.bin", dtype=np.int64), starts)
    assert result.manifest["tokenizer"]["kind"] == "gpt2" and result.manifest["dtype"] == "uint16"
