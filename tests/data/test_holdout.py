"""The held-out test split (`slowrun prepare --test-split`): the stream's next tokens after training.

Expected tokens are rebuilt independently of the preparation code: the source's documents are read
directly (the synthetic language's generator, the WebText JSON lines), the ones the prepared splits hold are
skipped by the manifest's document counts, and the rest are BOS-prefixed and concatenated up to the budget.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.data.holdout import (TEST_FORMAT, SplitSelection, compute_split_hash, format_test_manifest,
                                  load_test_key, open_test_split, prepare_test_split, read_test_manifest,
                                  verify_test_split)
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


# --- keyed selection (--test-key): which documents after training the split keeps -------------------------------

def kept_numbers(key: bytes, rate: float, count: int) -> list[int]:
    """The documents after training (numbered from 0) a key keeps, straight from the scheme's definition."""
    threshold = round(rate * 2**64)
    return [k for k in range(count)
            if int.from_bytes(hmac.new(key, b"slowrun-test-split/1:" + str(k).encode(), hashlib.sha256).digest()[:8],
                              "big") < threshold]


def old_split_hash(manifest: dict) -> str:
    """The split hash as it was computed before keyed selection existed (no `selection` in it)."""
    identity = {
        "format": manifest["format"], "tokenizer": manifest["tokenizer"]["hash"],
        "vocab_size": manifest["tokenizer"]["vocab_size"], "bos_id": manifest["tokenizer"]["bos_id"],
        "seq_len": manifest["seq_len"],
        "follows": {key: manifest["follows"][key] for key in ("data_hash", "documents", "tokens")},
        "split": {key: manifest["split"][key] for key in ("tokens", "documents", "tokens_sha256", "docs_sha256")},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def write_key(path: Path, key: bytes) -> Path:
    path.write_bytes(key)
    path.chmod(0o600)
    return path


KEY_A, KEY_B = bytes(range(32)), bytes(range(100, 140))


@pytest.mark.parametrize("rate", [None, 0.3])  # None: the default, 1/8
def test_a_keyed_split_holds_exactly_the_documents_the_key_picks(synthetic_data, tmp_path, rate):
    key = write_key(tmp_path / "key", KEY_A)
    result = prepare_test_split(BUILTIN_TRACKS["synthetic"], synthetic_data, tmp_path / "test", test_tokens=3000,
                                test_key=key, sample_rate=rate, **QUIET)
    prepared, manifest = read_manifest(synthetic_data), result.manifest
    skip = prepared["splits"]["val"]["documents"] + prepared["splits"]["train"]["documents"]

    # independently: the language's documents after training, kept by HMAC of their number, BOS-prefixed
    language, expected_rate = SyntheticLanguage(), 1 / 8 if rate is None else rate
    after = [ids for index, ids in zip(range(skip + 1000), language.documents(0)) if index >= skip]
    kept = kept_numbers(KEY_A, expected_rate, len(after))
    tokens, starts, truncated = expected_split((after[k] for k in kept), 0, 3000, language.bos_id)
    assert np.array_equal(np.fromfile(tmp_path / "test" / "test.tokens.bin", dtype=np.uint16), tokens)
    assert np.array_equal(np.fromfile(tmp_path / "test" / "test.docs.bin", dtype=np.int64), starts)

    used = kept[:len(starts)]  # the kept documents the split holds; the last one closes it
    assert len(used) < used[-1] + 1  # some documents in between were read and dropped
    split = manifest["split"]
    assert split["first_document"] == f"synthetic(seed=0)[{skip + used[0]}]"
    assert split["first_document_index"] == skip + used[0]
    assert split["last_document"] == f"synthetic(seed=0)[{skip + used[-1]}]" and split["last_truncated"] is truncated
    assert manifest["follows"]["documents"] == skip  # what comes before the candidates is unchanged
    assert manifest["selection"] == {
        "kind": "keyed", "scheme": "hmac-sha256/1", "rate": expected_rate,
        "key_commitment": hashlib.sha256(b"slowrun-test-key/1:" + KEY_A).hexdigest(), "documents_read": used[-1] + 1}
    assert manifest["request"]["selection"] == {"scheme": "hmac-sha256/1", "rate": expected_rate,
                                                "key_commitment": manifest["selection"]["key_commitment"]}
    # the selection is part of the split's name, and the key is written nowhere
    assert manifest["split_hash"] == compute_split_hash(manifest) != old_split_hash(manifest)
    assert verify_test_split(tmp_path / "test") == []
    for path in (tmp_path / "test").iterdir():
        assert KEY_A not in path.read_bytes() and KEY_A.hex() not in path.read_bytes().decode("latin-1")
    assert KEY_A.hex() not in format_test_manifest(manifest) and KEY_A.hex() not in repr(SplitSelection(KEY_A, 0.5))
    assert str(KEY_A) not in repr(SplitSelection(KEY_A, 0.5))
    assert f"kept {len(used)} of the {used[-1] + 1:,} documents" in format_test_manifest(manifest)


def test_another_key_or_rate_gives_another_split_and_the_folder_is_not_mixed_up(synthetic_data, tmp_path):
    track = BUILTIN_TRACKS["synthetic"]
    first, second = write_key(tmp_path / "a", KEY_A), write_key(tmp_path / "b", KEY_B)
    a = prepare_test_split(track, synthetic_data, tmp_path / "test", test_tokens=2000, test_key=first, **QUIET)
    b = prepare_test_split(track, synthetic_data, tmp_path / "other", test_tokens=2000, test_key=second, **QUIET)
    tokens = [np.fromfile(r.folder / "test.tokens.bin", dtype=np.uint16) for r in (a, b)]
    assert not np.array_equal(*tokens) and a.manifest["split_hash"] != b.manifest["split_hash"]
    assert a.manifest["selection"]["key_commitment"] != b.manifest["selection"]["key_commitment"]

    # the same key and rate reuse the folder; another key or rate is refused without --force
    assert prepare_test_split(track, synthetic_data, tmp_path / "test", test_tokens=2000, test_key=first,
                              **QUIET).reused
    for other in ({"test_key": second}, {"test_key": first, "sample_rate": 0.5}, {}):
        with pytest.raises(DataError, match=r"already holds something else \(test split "):
            prepare_test_split(track, synthetic_data, tmp_path / "test", test_tokens=2000, **other, **QUIET)
    assert read_test_manifest(tmp_path / "test") == a.manifest
    replaced = prepare_test_split(track, synthetic_data, tmp_path / "test", test_tokens=2000, test_key=second,
                                  force=True, **QUIET)
    assert not replaced.reused and replaced.manifest["split_hash"] == b.manifest["split_hash"]
    assert np.array_equal(np.fromfile(tmp_path / "test" / "test.tokens.bin", dtype=np.uint16), tokens[1])


def test_a_missing_key_file_is_made_private_and_an_existing_one_never_overwritten(synthetic_data, tmp_path,
                                                                                  monkeypatch):
    key, messages = tmp_path / "private" / "keys" / "test.key", []
    umask = os.umask(0)  # the file's mode must not depend on the umask
    try:
        made = prepare_test_split(BUILTIN_TRACKS["synthetic"], synthetic_data, tmp_path / "test", test_tokens=1000,
                                  test_key=key, progress=False, log=messages.append)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    secret = key.read_bytes()
    assert len(secret) == 32 and len(set(secret)) > 8  # random bytes, not a constant
    assert any("created a new test key" in m and "keep it private; the same key makes the same split" in m
               for m in messages)
    assert made.manifest["selection"]["key_commitment"] == hashlib.sha256(b"slowrun-test-key/1:" + secret).hexdigest()

    # used again: read, not replaced, and nothing said about making one
    messages.clear()
    mtime = key.stat().st_mtime_ns
    again = prepare_test_split(BUILTIN_TRACKS["synthetic"], synthetic_data, tmp_path / "again", test_tokens=1000,
                               test_key=key, progress=False, log=messages.append)
    assert key.read_bytes() == secret and key.stat().st_mtime_ns == mtime
    assert not any("created" in m for m in messages) and again.manifest["split_hash"] == made.manifest["split_hash"]
    # even when another preparation makes it between the look and the create (O_EXCL), the existing key stays
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self, *a, **k: False if self == key else real_exists(self, *a, **k))
    assert load_test_key(key, log=messages.append) == secret and key.read_bytes() == secret
    assert not any("created" in m for m in messages)


def test_a_short_key_and_a_bad_rate_are_refused_before_anything_is_written(synthetic_data, tmp_path):
    track = BUILTIN_TRACKS["synthetic"]
    for size in (0, 31):
        short = write_key(tmp_path / f"short{size}", KEY_A[:size])
        with pytest.raises(DataError, match=f"holds {size} bytes; a test key is at least 32 random bytes"):
            prepare_test_split(track, synthetic_data, tmp_path / "test", test_key=short, **QUIET)
        assert short.read_bytes() == KEY_A[:size]
    key = tmp_path / "never-made.key"
    for rate, match in ((0, r"in \(0, 1\]"), (1.5, r"in \(0, 1\]"), (float("nan"), r"in \(0, 1\]"),
                        (1e-30, "keeps no document")):
        with pytest.raises(DataError, match=match):
            prepare_test_split(track, synthetic_data, tmp_path / "test", test_key=key, sample_rate=rate, **QUIET)
    with pytest.raises(DataError, match="add --test-key KEYFILE"):
        prepare_test_split(track, synthetic_data, tmp_path / "test", sample_rate=0.5, **QUIET)
    # the key never goes where it would be published or replaced
    with pytest.raises(DataError, match="inside .*published with the track"):
        prepare_test_split(track, synthetic_data, tmp_path / "test", test_key=synthetic_data / "test.key", **QUIET)
    with pytest.raises(DataError, match="inside .*--force replaces"):
        prepare_test_split(track, synthetic_data, tmp_path / "test", test_key=tmp_path / "test" / "key", **QUIET)
    assert not key.exists() and not (tmp_path / "test").exists() and not (synthetic_data / "test.key").exists()


def test_a_contiguous_split_keeps_its_hash_and_old_manifests_read_as_contiguous(synthetic_data, tmp_path):
    result = prepare_test_split(BUILTIN_TRACKS["synthetic"], synthetic_data, tmp_path / "test", test_tokens=1000,
                                **QUIET)
    manifest = result.manifest
    assert manifest["selection"] == {"kind": "contiguous"} and "selection" not in manifest["request"]
    assert manifest["split_hash"] == old_split_hash(manifest) == compute_split_hash(manifest)
    assert "contiguous" in format_test_manifest(manifest)
    # a manifest written before selections existed: still verifies, still reads as contiguous
    path = tmp_path / "test" / "manifest.json"
    old = {k: v for k, v in json.loads(path.read_text()).items() if k != "selection"}
    path.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
    assert verify_test_split(tmp_path / "test") == [] and "contiguous" in format_test_manifest(old)
    assert prepare_test_split(BUILTIN_TRACKS["synthetic"], synthetic_data, tmp_path / "test", test_tokens=1000,
                              **QUIET).reused  # and an old folder is recognised as the same split


def test_a_keyed_shortfall_says_what_was_kept_and_how_to_get_more(tmp_path):
    """On local files, tokenized independently with the prepared BPE: the kept tokens it names are exact."""
    docs = write_docs(tmp_path / "docs.jsonl", 300)
    track = local_track([docs], seq_len=32)
    prepare_track(track, tmp_path / "prepared", progress=False, log=lambda _: None)
    key = write_key(tmp_path / "key", KEY_B)
    with pytest.raises(DataError, match="ran out") as refused:
        prepare_test_split(track, tmp_path / "prepared", tmp_path / "test", test_tokens=10**6, test_key=key,
                           sample_rate=0.25, **QUIET)
    assert not (tmp_path / "test").exists()
    message = str(refused.value)
    assert "higher --test-sample-rate" in message and "--test-tokens" in message

    prepared = read_manifest(tmp_path / "prepared")
    skip = prepared["splits"]["val"]["documents"] + prepared["splits"]["train"]["documents"]
    texts = [json.loads(line)["text"] for line in docs.read_text(encoding="utf-8").splitlines()][skip:]
    kept = kept_numbers(KEY_B, 0.25, len(texts))
    encoded = ByteBpeTokenizer.load(tmp_path / "prepared").encode_batch([texts[k] for k in kept])
    kept_tokens = sum(1 + len(ids) for ids in encoded)
    assert f"of the {len(texts):,} after the validation and training splits" in message
    assert f"the key kept {len(kept):,} (rate 0.25) holding {kept_tokens:,} tokens" in message
    assert f"at most {kept_tokens:,} tokens with --test-tokens" in message
    # asking for exactly that works, and holds exactly those documents
    result = prepare_test_split(track, tmp_path / "prepared", tmp_path / "test", test_tokens=kept_tokens,
                                test_key=key, sample_rate=0.25, **QUIET)
    tokens, starts, _ = expected_split(encoded, 0, kept_tokens, prepared["tokenizer"]["bos_id"])
    assert np.array_equal(np.fromfile(tmp_path / "test" / "test.tokens.bin", dtype=np.uint16), tokens)
    assert np.array_equal(np.fromfile(tmp_path / "test" / "test.docs.bin", dtype=np.int64), starts)
    assert result.manifest["split"]["first_document"] == f"{docs}:{skip + kept[0] + 1}"
    assert result.manifest["selection"]["documents_read"] == kept[-1] + 1


def test_cli_prepares_a_keyed_split_and_data_info_shows_the_commitment_not_the_key(synthetic_data, tmp_path, capsys):
    key, test = tmp_path / "keys" / "synthetic.key", tmp_path / "test"
    common = ["prepare", "--track", "synthetic", "--out", str(synthetic_data), "--quiet"]
    assert main([*common, "--test-split", str(test), "--test-key", str(key), "--test-tokens", "1000",
                 "--test-sample-rate", "0.25"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(test)
    assert "keep it private; the same key makes the same split" in captured.err and "selection    keyed" in captured.err
    secret = key.read_bytes()
    assert main(["data", "info", str(test)]) == 0
    out = capsys.readouterr().out
    assert hashlib.sha256(b"slowrun-test-key/1:" + secret).hexdigest() in out and secret.hex() not in out
    assert "rate 0.25" in out and "verification ok" in out
    assert main([*common, "--test-key", str(key)]) == 2
    assert "add --test-split DIR" in capsys.readouterr().err
    assert main([*common, "--test-split", str(tmp_path / "t2"), "--test-sample-rate", "0.5"]) == 2
    assert "add --test-key KEYFILE" in capsys.readouterr().err
