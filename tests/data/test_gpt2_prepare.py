"""The prepared arrays of real text equal an independent re-tokenization with tiktoken."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.data.prepare import prepare_track
from harness.data.store import TokenStore
from harness.data.tokenizers import Gpt2Tokenizer
from harness.rules.tracks import TokenizerSpec
from tests.conftest import shared_path
from tests.data.helpers import local_track

VAL, TRAIN = 50_000, 150_000


def _reference_encoding():
    """GPT-2 built straight from tiktoken's own pieces, independent of harness.data.tokenizers."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = load_tiktoken_bpe(str(shared_path("gpt2", "r50k_base.tiktoken")))
    return tiktoken.Encoding("ref", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def _reference_splits(files, budgets):
    enc = _reference_encoding()
    splits, current, docs, budget_index = [], [], [], 0
    for file in files:
        for line in open(file, encoding="utf-8"):
            if not line.strip():
                continue
            ids = [50256] + enc.encode_ordinary(json.loads(line)["text"])
            room = budgets[budget_index] - len(current)
            docs.append(len(current))
            current.extend(ids[:room])
            if len(current) == budgets[budget_index]:
                splits.append((np.array(current, np.uint16), np.array(docs, np.int64)))
                current, docs = [], []
                budget_index += 1
                if budget_index == len(budgets):
                    return splits
    raise AssertionError("webtext too small for the test budgets")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    files = sorted(shared_path("webtext").glob("*.jsonl"))
    ranks = str(shared_path("gpt2", "r50k_base.tiktoken"))
    track = local_track(files, val_tokens=VAL, train_tokens=TRAIN,
                        tokenizer=TokenizerSpec(kind="gpt2", ranks_path=ranks), seq_len=1024)
    out = tmp_path_factory.mktemp("gpt2") / "webtext-gpt2"
    result = prepare_track(track, out, progress=False)
    return track, files, out, result


def test_arrays_equal_independent_tiktoken(prepared):
    track, files, out, _ = prepared
    (val_tokens, val_docs), (train_tokens, train_docs) = _reference_splits(files, (VAL, TRAIN))
    for split, tokens, docs in (("val", val_tokens, val_docs), ("train", train_tokens, train_docs)):
        store = TokenStore.open(out, split, verify=True)
        np.testing.assert_array_equal(np.asarray(store.tokens), tokens)
        np.testing.assert_array_equal(np.asarray(store.doc_starts), docs)


def test_every_document_starts_with_bos_and_none_crosses_the_split(prepared):
    _, files, out, result = prepared
    val = TokenStore.open(out, "val")
    train = TokenStore.open(out, "train")
    for store in (val, train):
        assert store.doc_starts[0] == 0
        assert np.all(np.asarray(store.tokens)[np.asarray(store.doc_starts)] == 50256)
        # BOS appears only at document starts: no document was glued to another
        assert np.count_nonzero(np.asarray(store.tokens) == 50256) == store.n_documents
    splits = result.manifest["splits"]
    last_val_line = int(splits["val"]["last_document"].rsplit(":", 1)[1])
    first_train_line = int(splits["train"]["first_document"].rsplit(":", 1)[1])
    assert splits["val"]["last_document"].rsplit(":", 1)[0] == splits["train"]["first_document"].rsplit(":", 1)[0]
    assert first_train_line == last_val_line + 1  # training continues with the very next document


def test_preparing_twice_is_byte_identical(prepared, tmp_path):
    track, _, out, result = prepared
    again = prepare_track(track, tmp_path / "again", progress=False)
    assert again.manifest["data_hash"] == result.manifest["data_hash"]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


def test_fineweb_edu_sample_is_gpt2():
    text = shared_path("fineweb-edu", "fineweb_edu_sample10BT_head1Mchars.txt").read_text(encoding="utf-8")
    tokenizer = Gpt2Tokenizer(shared_path("gpt2", "r50k_base.tiktoken"))
    assert len(tokenizer.encode(text)) == 217_888
    assert tokenizer.encode("Hello world") == [15496, 995]


def test_ranks_lookup_order(monkeypatch, tmp_path):
    ranks = shared_path("gpt2", "r50k_base.tiktoken")
    monkeypatch.setenv("SLOWRUN_GPT2_RANKS", str(ranks))
    from_env = Gpt2Tokenizer()
    assert from_env.origin == str(ranks)
    explicit = Gpt2Tokenizer(ranks)
    assert explicit.identity()["hash"] == from_env.identity()["hash"]
    monkeypatch.setenv("SLOWRUN_GPT2_RANKS", str(tmp_path / "missing.tiktoken"))
    with pytest.raises(Exception, match="missing.tiktoken"):
        Gpt2Tokenizer()
    assert Gpt2Tokenizer(ranks).origin == str(ranks)  # the explicit path wins over the variable
