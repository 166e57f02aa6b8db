"""The reader over prepared splits, user tracks from TOML, every local file format, and the CLI."""

from __future__ import annotations

import gzip
import json
import textwrap

import numpy as np
import pytest

from harness.cli import main
from harness.data.local_files import LocalFilesSource, expand_paths
from harness.data.prepare import prepare_track
from harness.data.store import TokenStore
from harness.errors import TrackError
from harness.rules.tracks import get_track, load_track_file
from tests.conftest import shared_path
from tests.data.test_bad_input import write_docs


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "synthetic"
    prepare_track(get_track("synthetic"), out, progress=False)
    return out


def test_windows_are_zero_copy_disjoint_chunks(synthetic_dir):
    store = TokenStore.open(synthetic_dir, "val")
    windows = store.windows(128)
    assert windows.shape == (32_768 // 129, 129)
    assert np.shares_memory(windows, store.tokens)
    raw = np.fromfile(synthetic_dir / "val.tokens.bin", dtype=np.uint16)
    np.testing.assert_array_equal(windows[7], raw[7 * 129 : 8 * 129])
    assert np.shares_memory(store.document(3), store.tokens)


def test_epoch_order_is_a_seeded_permutation_of_whole_documents(synthetic_dir):
    store = TokenStore.open(synthetic_dir, "train")
    order0 = store.document_order(seed=5, epoch=0)
    assert np.array_equal(order0, store.document_order(seed=5, epoch=0))
    assert not np.array_equal(order0, store.document_order(seed=5, epoch=1))
    assert not np.array_equal(order0, store.document_order(seed=6, epoch=0))
    tokens = store.epoch_tokens(seed=5, epoch=0)
    expected = np.concatenate([np.asarray(store.document(i)) for i in order0])
    np.testing.assert_array_equal(tokens, expected)
    assert sorted(tokens.tolist()) == sorted(np.asarray(store.tokens).tolist())


def test_document_slices_for_the_fitness_carve(synthetic_dir):
    store = TokenStore.open(synthetic_dir, "train")
    manifest = json.loads((synthetic_dir / "manifest.json").read_text())
    k = manifest["fitness"]["documents"]
    fitness, rest = store.documents(0, k), store.documents(k)
    assert fitness.n_tokens == manifest["fitness"]["tokens"] >= 4_096
    assert fitness.n_tokens + rest.n_tokens == store.n_tokens
    np.testing.assert_array_equal(rest.document(0), store.document(k))
    assert rest.doc_starts[0] == 0


def test_data_info_detects_a_flipped_byte(synthetic_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(synthetic_dir, copy)
    assert main(["data", "info", str(copy)]) == 0
    assert "verification ok" in capsys.readouterr().out
    raw = bytearray((copy / "train.tokens.bin").read_bytes())
    raw[1000] ^= 1
    (copy / "train.tokens.bin").write_bytes(bytes(raw))
    assert main(["data", "info", str(copy)]) == 1
    assert "train.tokens.bin: sha256" in capsys.readouterr().out


def test_user_track_from_toml(tmp_path):
    write_docs(tmp_path / "corpus.jsonl", 300)
    toml = tmp_path / "tracks.toml"
    toml.write_text(textwrap.dedent("""
        [tracks.mine]
        description = "my corpus"
        val_tokens = 3000
        train_tokens = 9000
        seq_len = 64
        fitness_tokens = 500
        source = { kind = "local", paths = ["corpus.jsonl"] }
        tokenizer = { kind = "byte-bpe", vocab_size = 320 }
    """))
    track = get_track("mine", [str(toml)])
    result = prepare_track(track, tmp_path / "out", progress=False)
    assert result.manifest["splits"]["train"]["tokens"] == 9000
    assert result.manifest["tokenizer"]["vocab_size"] == 320
    assert result.manifest["fitness"]["tokens"] >= 500


@pytest.mark.parametrize("body, message", [
    ('[tracks.x]\nval_tokens = 10\ntrain_tokens = 100\nseq_len = 4\nsorce = {}', "unknown key\\(s\\) sorce"),
    ('[tracks.x]\nval_tokens = 10\nseq_len = 4\nsource = {kind="local", paths=["a"]}\ntokenizer={kind="gpt2"}',
     "missing train_tokens"),
    ('[tracks.x]\nval_tokens = 10\ntrain_tokens = 100\nseq_len = 4\nsource = {kind="ftp"}\ntokenizer={kind="gpt2"}',
     "source kind 'ftp' is unknown"),
    ('[tracks.x\n', "not valid TOML"),
])
def test_bad_track_files_say_what_to_fix(tmp_path, body, message):
    toml = tmp_path / "bad.toml"
    toml.write_text(body)
    with pytest.raises(TrackError, match=message):
        load_track_file(toml)


def test_unknown_track_lists_known_ones():
    with pytest.raises(TrackError, match="known tracks: fineweb, synthetic, webtext"):
        get_track("fineweb-edu")


def test_every_local_format_gives_the_same_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"document number {i} with ünïcode" for i in range(5)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps([{"body": t} for t in texts]), encoding="utf-8")
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress((tmp_path / "a.jsonl").read_bytes()))
    pq.write_table(pa.table({"body": texts}), tmp_path / "d.parquet")
    (tmp_path / "e.txt").write_text("\n\n".join(texts), encoding="utf-8")
    for name in ("a.jsonl", "b.json", "c.jsonl.gz", "d.parquet"):
        docs = [d.content for d in LocalFilesSource(tuple(expand_paths([str(tmp_path / name)])), "body")]
        assert docs == texts, name
    txt = LocalFilesSource((tmp_path / "e.txt",), txt_separator="\n\n")
    assert [d.content for d in txt] == texts
    whole = LocalFilesSource((tmp_path / "e.txt",))
    assert [d.content for d in whole] == ["\n\n".join(texts)]


def test_shared_c4_gzipped_json_lines():
    files = expand_paths([str(shared_path("c4") / "olmo_c4-sample.0*.json.gz")])
    docs = list(LocalFilesSource(tuple(files)))
    assert len(docs) == 30 and all(d.content for d in docs)


def test_fineweb_stream_code_path_on_local_parquet(tmp_path):
    """The FineWeb source's `datasets` streaming path, fed local parquet instead of the Hub."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from harness.data.fineweb import FinewebSource

    texts = [f"row {i}" for i in range(7)]
    pq.write_table(pa.table({"text": texts, "id": list(range(7))}), tmp_path / "part.parquet")
    source = FinewebSource(data_files=(str(tmp_path / "part.parquet"),))
    assert [d.content for d in source] == texts


def test_progress_bar_shows_token_rate(tmp_path, capfd):
    prepare_track(get_track("synthetic"), tmp_path / "p", progress=True)
    assert "tok/s" in capfd.readouterr().err


def test_official_fineweb_track_is_the_one_design_defines():
    track = get_track("fineweb")
    assert track.source.kind == "fineweb" and track.tokenizer.kind == "gpt2"
    assert (track.val_tokens, track.train_tokens, track.seq_len) == (10_000_000, 100_000_000, 2048)
    # every full window of 2049 tokens is scored: 4,880 windows of 2,048 targets
    assert track.val_windows == 10_000_000 // 2049 == 4880
    assert track.val_windows * track.seq_len == 9_994_240
