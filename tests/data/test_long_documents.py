"""Long documents: cut at whitespace, their tokens equal the whole document's; prepare no longer fails or
swells when the first document is larger than the tokenizer's sample.

Expected tokens come from encoding the whole document in one call, with tiktoken built from the shared
ranks or with the tokenizers library directly, never from the piecewise code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from harness.data.long_documents import PIECE_CHARS, encode_prefix, is_long, text_pieces
from harness.data.prepare import prepare_track
from harness.data.tokenizers import ByteBpeTokenizer, Gpt2Tokenizer
from harness.rules.tracks import TokenizerSpec
from tests.conftest import REPO_ROOT, shared_path
from tests.data.helpers import local_track
from tests.data.test_gpt2_prepare import _reference_encoding

# Separators with every kind of whitespace run a cut can meet: double spaces, spaces around newlines,
# tabs, an ideographic space (whitespace, not a cut point), none at all.
SEPARATORS = ["\n\n", "  ", " \n ", "\t", "\u3000", "", "\n", " \r\n", "   \n\n  "]


def webtext_texts(name: str = "webtext.test.jsonl") -> list[str]:
    return [json.loads(line)["text"] for line in open(shared_path("webtext", name), encoding="utf-8")
            if line.strip()]


@pytest.fixture(scope="module")
def long_text() -> str:
    """All of WebText's test documents in one document, about 1.4 MB, joined by varied whitespace."""
    texts = webtext_texts()
    return "".join(t + SEPARATORS[i % len(SEPARATORS)] for i, t in enumerate(texts))


@pytest.fixture(scope="module")
def small_bpe() -> ByteBpeTokenizer:
    return ByteBpeTokenizer.train(webtext_texts("webtext.valid.jsonl")[:400], 2048)


def test_pieces_join_to_the_text_and_end_before_whitespace_after_text(long_text):
    pieces = list(text_pieces(long_text, 4096))
    assert "".join(pieces) == long_text and len(pieces) > 300
    for piece, after in zip(pieces, pieces[1:]):
        assert not piece[-1].isspace() and after[0] in " \n"
        assert len(piece) <= 4096
    assert list(text_pieces("", 10)) == []
    # no cut point in the first 50 characters: the piece runs to the first one after them
    assert list(text_pieces("x" * 50 + "  y z" + " w" * 6, 10)) == ["x" * 50, "  y z w w", " w w w w"]
    assert list(text_pieces("\u3000".join(["abc"] * 10), 4)) == ["\u3000".join(["abc"] * 10)]  # never a cut


def test_gpt2_tokens_of_pieces_equal_the_whole_documents(long_text):
    whole = _reference_encoding().encode_ordinary(long_text)
    gpt2 = Gpt2Tokenizer(shared_path("gpt2", "r50k_base.tiktoken"))
    assert encode_prefix(gpt2, long_text, cap=10**9, size=4096).tolist() == whole
    prefix = encode_prefix(gpt2, long_text, cap=100_000, size=4096)
    assert 100_000 <= prefix.size < len(whole) and prefix.tolist() == whole[: prefix.size]


def test_byte_bpe_tokens_of_pieces_equal_the_whole_documents(long_text, small_bpe):
    whole = small_bpe._tok.encode(long_text, add_special_tokens=False).ids  # the library, in one call
    assert len(whole) > 400_000
    assert encode_prefix(small_bpe, long_text, cap=10**9, size=4096).tolist() == whole
    assert encode_prefix(small_bpe, long_text, cap=10**9).tolist() == whole  # default pieces
    prefix = encode_prefix(small_bpe, long_text, cap=50_000, size=4096)
    assert 50_000 <= prefix.size < len(whole) and prefix.tolist() == whole[: prefix.size]


def test_training_on_pieces_learns_the_whole_documents_vocabulary(long_text):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    assert is_long(long_text)
    reference = Tokenizer(models.BPE())
    reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    reference.decoder = decoders.ByteLevel()
    reference.train_from_iterator([long_text], trainers.BpeTrainer(
        vocab_size=1024, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    assert ByteBpeTokenizer.train([long_text], 1024)._tok.to_str() == reference.to_str()


# ---- prepare with a first document larger than the BPE sample (8 bytes x the budgets) -----------------

def write_long_first(path, long_text: str, rest: list[str]):
    with open(path, "w", encoding="utf-8") as f:
        for text in [long_text, *rest]:
            f.write(json.dumps({"text": text}) + "\n")
    return path


def hf_ids(tokenizer_json, texts) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    return [tok.encode(t, add_special_tokens=False).ids for t in texts]


def test_prepare_with_a_first_document_larger_than_the_sample(tmp_path, long_text):
    rest = webtext_texts("webtext.valid.jsonl")[:300]
    data = write_long_first(tmp_path / "long.jsonl", long_text, rest)
    val, train = 2_000, 6_000
    assert len(long_text.encode()) > 8 * (val + train)  # larger than the whole sample
    result = prepare_track(local_track([data], val_tokens=val, train_tokens=train), tmp_path / "out", progress=False)
    splits = result.manifest["splits"]
    tokenizer_json = (tmp_path / "out" / "tokenizer.json").read_text()
    bos = 0
    # validation: BOS and the first 1,999 tokens of the long document, encoded whole
    whole_first = hf_ids(tokenizer_json, [long_text])[0]
    val_tokens = np.fromfile(tmp_path / "out" / "val.tokens.bin", dtype=np.uint16)
    assert val_tokens.tolist() == [bos] + whole_first[: val - 1]
    assert splits["val"]["documents"] == 1 and splits["val"]["last_truncated"]
    # training: the next documents, each after a BOS, cut at 6,000 tokens
    expected, starts = [], []
    for ids in hf_ids(tokenizer_json, rest):
        starts.append(len(expected))
        expected += [bos] + ids
        if len(expected) >= train:
            break
    train_tokens = np.fromfile(tmp_path / "out" / "train.tokens.bin", dtype=np.uint16)
    assert train_tokens.tolist() == expected[:train]
    assert np.fromfile(tmp_path / "out" / "train.docs.bin", dtype=np.int64).tolist() == starts
    # the tokenizer is the BPE of exactly those training documents
    assert ByteBpeTokenizer.train(rest[: len(starts)], 300)._tok.to_str() == tokenizer_json


def test_gpt2_prepare_of_a_long_first_document_is_cut_like_the_whole_document(tmp_path, long_text):
    rest = webtext_texts("webtext.valid.jsonl")[:600]
    data = write_long_first(tmp_path / "long.jsonl", long_text, rest)
    ranks = str(shared_path("gpt2", "r50k_base.tiktoken"))
    track = local_track([data], val_tokens=150_000, train_tokens=20_000,
                        tokenizer=TokenizerSpec(kind="gpt2", ranks_path=ranks))
    prepare_track(track, tmp_path / "out", progress=False)
    enc = _reference_encoding()
    whole_first = enc.encode_ordinary(long_text)
    assert len(whole_first) > 150_000 > PIECE_CHARS // 4  # several pieces are needed, not all
    val_tokens = np.fromfile(tmp_path / "out" / "val.tokens.bin", dtype=np.uint16)
    assert val_tokens.tolist() == [50256] + whole_first[: 150_000 - 1]
    train_tokens = np.fromfile(tmp_path / "out" / "train.tokens.bin", dtype=np.uint16)
    expected = [i for t in rest for i in [50256] + enc.encode_ordinary(t)]
    assert train_tokens.tolist() == expected[:20_000]


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from harness.data.prepare import prepare_track
    from tests.data.helpers import local_track

    def status_kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])

    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest) across exec
    before = status_kb("VmRSS")
    result = prepare_track(local_track([data], val_tokens=2_000, train_tokens=6_000), out, progress=False,
                           log=lambda _: None)
    splits = result.manifest["splits"]
    print(json.dumps({"growth_kb": status_kb("VmHWM") - before, "val_documents": splits["val"]["documents"],
                      "train_documents": splits["train"]["documents"]}))
""")



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the resident size from /proc (Linux)")
def test_a_long_document_is_never_held_several_times(tmp_path, long_text):
    """A 5.4 MB document inside the BPE sample, so that the old code prepared it too: the tokenizers
    library's per-token records of the whole document, made in every fixed-point round, took it past
    300 bytes per byte of the document. Now reading its JSON line (bytes, text and parsed string, at 2
    bytes a character here) and the trainer's word tables are most of what remains."""
    texts = webtext_texts("webtext.valid.jsonl")
    huge = "\n\n".join([long_text] * 4)
    data = write_long_first(tmp_path / "huge.jsonl", texts[0], [*texts[1:20], huge, *texts[20:300]])
    size = len(huge.encode())
    # one tokenizers thread: what is measured is the document's copies, not per-thread buffers
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(data), str(tmp_path / "out")], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["train_documents"] == 20 - report["val_documents"] + 1  # the huge document ends training
    growth = report["growth_kb"] * 1024
    assert growth < 25 * size, f"peak memory grew by {growth / 1e6:.0f} MB for a {size / 1e6:.1f} MB document"
