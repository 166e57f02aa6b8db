"""Slowrun's fineweb_*.pt files, in both of its layouts, import to exactly what streamed preparation writes.

The files are written here the way slowrun's prepare_data.py writes them (restated from
qlabs-eng/slowrun at a4732774 for the current layout and 0d49316 for the chunked one), from WebText
documents tokenized by tiktoken independently of the harness; the streamed preparation reads the same
documents through the FineWeb source's local-files path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from harness.cli import main
from harness.data.prepare import prepare_track
from harness.data.slowrun_files import (
    PUBLISHED_SHA256,
    export_slowrun_files,
    import_slowrun_files,
    read_slowrun_file,
    unshuffle_sequences,
)
from harness.errors import DataError
from harness.rules.tracks import BUILTIN_TRACKS, TokenizerSpec
from tests.conftest import shared_path
from tests.data.test_gpt2_prepare import _reference_encoding

torch = pytest.importorskip("torch")

SEQ = 128  # sequence size (seq_len + 1) of the test track
BATCH = 16  # the chunked layout's BATCH_SIZE
# Whole sequences, so the chunked layout drops nothing: 165 and 470 sequences (the last chunk is padded).
VAL, TRAIN = 165 * SEQ, 470 * SEQ
BOS = 50256


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def webtext_file():
    return shared_path("webtext", "webtext.test.jsonl")


def fineweb_like(val: int, train: int):
    ranks = str(shared_path("gpt2", "r50k_base.tiktoken"))
    return dataclasses.replace(BUILTIN_TRACKS["fineweb"], val_tokens=val, train_tokens=train, seq_len=SEQ - 1,
                               fitness_tokens=2_000, tokenizer=TokenizerSpec(kind="gpt2", ranks_path=ranks))


def slowrun_streams(budgets):
    """prepare_data.py's tokenize_documents, restated: BOS + ordinary encoding per document, each split cut
    at its budget, the next split starting from the next document."""
    enc = _reference_encoding()
    texts = (json.loads(line)["text"] for line in open(webtext_file(), encoding="utf-8") if line.strip())
    streams = []
    for budget in budgets:
        tokens, starts = [], []
        for text in texts:
            ids = [BOS] + enc.encode_ordinary(text)
            starts.append(len(tokens))
            tokens.extend(ids[: budget - len(tokens)])
            if len(tokens) >= budget:
                break
        assert len(tokens) == budget, "webtext too small for the test budgets"
        streams.append((np.array(tokens, np.uint16), np.array(starts, np.int64)))
    return streams


def write_current(path, tokens, starts, seed):
    torch.save({"tokens": torch.from_numpy(tokens.copy()), "doc_starts": torch.from_numpy(starts.copy()),
                "bos_id": BOS, "seq_shuffle_seed": seed, "seq_size": SEQ}, path)


def write_chunked(path, tokens, seed):
    """create_sequences, np.random.seed(seed); np.random.shuffle(rows), then write_datafile's padded chunks."""
    n = tokens.size // SEQ
    rows = tokens[: n * SEQ].reshape(n, SEQ).copy()
    np.random.RandomState(seed).shuffle(rows)
    chunks, counts = [], []
    for start in range(0, n, BATCH):
        block = rows[start : start + BATCH]
        counts.append(len(block))
        if len(block) < BATCH:
            block = np.concatenate([block, np.zeros((BATCH - len(block), SEQ), np.uint16)])
        chunks.append(torch.from_numpy(block.reshape(-1).copy()))
    torch.save({"chunks": chunks, "valid_counts": counts, "batch_size": BATCH, "sequence_size": SEQ}, path)


def write_pair(folder, layout, streams):
    folder.mkdir(parents=True, exist_ok=True)
    for (tokens, starts), name, seed in zip(streams, ("fineweb_val.pt", "fineweb_train.pt"), (42, 43)):
        if layout == "current":
            write_current(folder / name, tokens, starts, seed)
        else:
            write_chunked(folder / name, tokens, seed)
    return {layout: {"val": sha256_of(folder / "fineweb_val.pt"), "train": sha256_of(folder / "fineweb_train.pt")}}


def quiet(_message):
    pass


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    track = fineweb_like(VAL, TRAIN)
    out = tmp_path_factory.mktemp("streamed") / "fineweb"
    result = prepare_track(track, out, source_override=[str(webtext_file())], progress=False, log=quiet)
    return track, out, result.manifest


@pytest.fixture(scope="module")
def streams():
    return slowrun_streams((VAL, TRAIN))


def assert_same_preparation(imported, streamed_out, streamed_manifest):
    for name in ("val.tokens.bin", "val.docs.bin", "train.tokens.bin", "train.docs.bin", "token_bytes.bin"):
        assert (imported / name).read_bytes() == (streamed_out / name).read_bytes(), name
    manifest = json.loads((imported / "manifest.json").read_text())
    assert manifest["data_hash"] == streamed_manifest["data_hash"]
    origin = manifest.pop("imported_from")
    for split in ("val", "train"):
        assert manifest["splits"][split].pop("last_truncated") is None  # the files do not say
    expected = json.loads(json.dumps(streamed_manifest))
    for split in ("val", "train"):
        expected["splits"][split].pop("last_truncated")
    assert manifest == expected
    return origin


@pytest.mark.parametrize("layout", ["current", "chunked"])
def test_import_equals_streamed_preparation(layout, streamed, streams, tmp_path):
    track, streamed_out, streamed_manifest = streamed
    expected = write_pair(tmp_path / "fineweb_data", layout, streams)
    imported = tmp_path / "imported"
    import_slowrun_files(track, tmp_path / "fineweb_data", imported, expected_sha256=expected,
                         source_override=[str(webtext_file())], log=quiet)
    origin = assert_same_preparation(imported, streamed_out, streamed_manifest)
    assert origin["layout"] == layout and origin["repository"] == "qlabs-eng/slowrun"
    assert origin["files"]["train"]["sha256"] == expected[layout]["train"]
    assert origin["files"]["train"]["published"] is False  # a test file is not slowrun's published one
    assert origin["files"]["val"]["dropped_tokens"] == 0


def test_chunked_layout_drops_the_partial_sequence_and_says_so(tmp_path):
    """Budgets that are not whole sequences: the older files lost each split's tail; the import holds the
    streamed preparation's arrays cut to whole sequences, and no training document index it cannot know."""
    val, train = VAL + 77, TRAIN + 100
    track = fineweb_like(val, train)
    streamed = prepare_track(track, tmp_path / "streamed", source_override=[str(webtext_file())],
                             progress=False, log=quiet).manifest
    expected = write_pair(tmp_path / "fineweb_data", "chunked", slowrun_streams((val, train)))
    messages = []
    result = import_slowrun_files(track, tmp_path / "fineweb_data", tmp_path / "imported",
                                  expected_sha256=expected, source_override=[str(webtext_file())],
                                  log=messages.append)
    for split, budget, kept in (("val", val, VAL), ("train", train, TRAIN)):
        full = np.fromfile(tmp_path / "streamed" / f"{split}.tokens.bin", np.uint16)
        full_starts = np.fromfile(tmp_path / "streamed" / f"{split}.docs.bin", np.int64)
        tokens = np.fromfile(tmp_path / "imported" / f"{split}.tokens.bin", np.uint16)
        starts = np.fromfile(tmp_path / "imported" / f"{split}.docs.bin", np.int64)
        np.testing.assert_array_equal(tokens, full[:kept])
        np.testing.assert_array_equal(starts, full_starts[full_starts < kept])
        assert result.manifest["imported_from"]["files"][split]["dropped_tokens"] == budget - kept
    assert result.manifest["data_hash"] != streamed["data_hash"]
    assert result.manifest["splits"]["val"]["first_document"] == streamed["splits"]["val"]["first_document"]
    assert result.manifest["splits"]["train"]["first_document"] is None
    assert any("77 tokens" in m for m in messages) and any("100 tokens" in m for m in messages)


def test_a_file_that_is_not_the_published_one_is_refused_with_both_hashes(streams, tmp_path, capsys):
    """The CLI path checks against the published pairs; a test-made file matches neither."""
    write_pair(tmp_path / "fineweb_data", "current", streams)
    actual = sha256_of(tmp_path / "fineweb_data" / "fineweb_val.pt")
    code = main(["prepare", "--track", "fineweb", "--from-slowrun", str(tmp_path / "fineweb_data"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert actual in err
    assert "6868ed375b289a89c72c2f9df1ecbdcff700c4b9478ca806435d2dbfad8573b1" in err  # current val
    assert "80e7e430d3a7d10892c2ff32579370c5b65fbe833579d7ea5d55cbd0504c8462" in err  # older val
    assert not (tmp_path / "out").exists()


def test_published_pairs_are_slowruns():
    assert PUBLISHED_SHA256 == {
        "current": {"val": "6868ed375b289a89c72c2f9df1ecbdcff700c4b9478ca806435d2dbfad8573b1",
                    "train": "36e7c95c1e7f6ed952fb002d76a03044e8617fea7e696a68d7dc1ce78465dcaf"},
        "chunked": {"val": "80e7e430d3a7d10892c2ff32579370c5b65fbe833579d7ea5d55cbd0504c8462",
                    "train": "e7e089aedbccb6865ce76c78453fa473c823969846fccd4000f5f13aef54e70e"},
    }


def test_a_pair_of_two_layouts_is_refused(streams, tmp_path):
    current = write_pair(tmp_path / "a", "current", streams)
    chunked = write_pair(tmp_path / "b", "chunked", streams)
    (tmp_path / "b" / "fineweb_val.pt").replace(tmp_path / "a" / "fineweb_val.pt")
    expected = {"current": current["current"], "chunked": chunked["chunked"]}
    with pytest.raises(DataError, match="chunked layout.*current layout; import one pair"):
        import_slowrun_files(fineweb_like(VAL, TRAIN), tmp_path / "a", tmp_path / "out", expected_sha256=expected,
                             log=quiet)


def test_export_reproduces_slowruns_file_and_its_loader_reads_it(streamed, streams, tmp_path):
    """Importing then exporting gives back the very bytes prepare_data.py's layout has (same torch), and the
    documents train.py builds from the file (tokens cut at doc_starts) are the prepared ones."""
    track, streamed_out, _ = streamed
    written = write_pair(tmp_path / "fineweb_data", "current", streams)
    export_slowrun_files(streamed_out, tmp_path / "exported", log=quiet)
    for split in ("val", "train"):
        assert sha256_of(tmp_path / "exported" / f"fineweb_{split}.pt") == written["current"][split]
    data = torch.load(tmp_path / "exported" / "fineweb_train.pt", weights_only=True)
    assert int(data["bos_id"]) == BOS and data["seq_shuffle_seed"] == 43 and data["seq_size"] == SEQ
    tokens, starts = data["tokens"].long(), data["doc_starts"].long()
    ends = torch.cat([starts[1:], torch.tensor([tokens.numel()])])
    documents = [tokens[s:e] for s, e in zip(starts.tolist(), ends.tolist())]
    expected_tokens, expected_starts = streams[1]
    assert len(documents) == expected_starts.size
    assert all(int(doc[0]) == BOS for doc in documents)
    np.testing.assert_array_equal(torch.cat(documents).numpy(), expected_tokens.astype(np.int64))
    with pytest.raises(DataError, match="already there; pass --force"):
        export_slowrun_files(streamed_out, tmp_path / "exported", log=quiet)


def test_unshuffle_inverts_numpys_legacy_row_shuffle():
    rows = np.arange(37 * 5, dtype=np.uint16).reshape(37, 5)
    shuffled = rows.copy()
    np.random.RandomState(42).shuffle(shuffled)
    assert not np.array_equal(shuffled, rows)
    blocks = [shuffled[:16].reshape(-1), shuffled[16:32].reshape(-1), shuffled[32:].reshape(-1)]
    np.testing.assert_array_equal(unshuffle_sequences(blocks, 42, 5), rows.reshape(-1))


@pytest.mark.parametrize("data, message", [
    ({"tokens": 1}, r"keys \['tokens'\] are neither slowrun's current layout"),
    ({"tokens": torch.zeros(4, dtype=torch.int32), "doc_starts": torch.zeros(1, dtype=torch.int64), "bos_id": 7,
      "seq_shuffle_seed": 42, "seq_size": 4}, "tokens is int32, slowrun writes uint16"),
    ({"tokens": torch.tensor([7, 1, 7, 2], dtype=torch.uint16), "doc_starts": torch.tensor([0]), "bos_id": 7,
      "seq_shuffle_seed": 42, "seq_size": 4}, "BOS 7 stands at 2 positions, doc_starts lists 1"),
    ({"tokens": torch.tensor([7, 1, 3, 2], dtype=torch.uint16), "doc_starts": torch.tensor([0, 2]), "bos_id": 7,
      "seq_shuffle_seed": 42, "seq_size": 4}, "some document does not start with BOS 7"),
    ({"tokens": torch.tensor([7, 1, 3, 2], dtype=torch.uint16), "doc_starts": torch.tensor([0]), "bos_id": 9,
      "seq_shuffle_seed": 42, "seq_size": 4}, "bos_id 9, the track's tokenizer has 7"),
    ({"chunks": [torch.zeros(8, dtype=torch.uint16)], "valid_counts": [1], "batch_size": 2, "sequence_size": 3},
     "chunk 0 holds 8 tokens"),
])
def test_an_unexpected_layout_says_what_is_wrong(data, message, tmp_path):
    path = tmp_path / "fineweb_val.pt"
    torch.save(data, path)
    layout = "chunked" if "chunks" in data else "current"
    with pytest.raises(DataError, match=message):
        read_slowrun_file(path, "val", layout, "0" * 64, bos_id=7, budget=4)


def test_the_import_says_what_the_official_table_makes_of_it(monkeypatch):
    import harness.rules.official_hashes as table
    from harness.data.slowrun_files import official_status

    def manifest(layout, published):
        files = {split: {"published": published} for split in ("val", "train")}
        return {"data_hash": "ab" * 32, "imported_from": {"layout": layout, "files": files}}

    assert table.OFFICIAL_DATA_HASHES["fineweb"] == frozenset()
    listed = official_status("fineweb", manifest("current", True))
    assert "the hash to list for it in harness/rules/official_hashes.py" in listed
    for layout, published in (("current", False), ("chunked", True)):
        message = official_status("fineweb", manifest(layout, published))
        assert message.endswith("lists no official data yet")
    monkeypatch.setitem(table.OFFICIAL_DATA_HASHES, "fineweb", frozenset({"ab" * 32}))
    assert " is the official data" in official_status("fineweb", manifest("chunked", False))
    monkeypatch.setitem(table.OFFICIAL_DATA_HASHES, "fineweb", frozenset({"cd" * 32}))
    assert "is NOT the official data" in official_status("fineweb", manifest("current", True))


def test_export_command(streamed, tmp_path, capsys):
    _, streamed_out, _ = streamed
    assert main(["export", "--data", str(streamed_out), "--out", str(tmp_path / "x")]) == 2
    assert "--slowrun-format" in capsys.readouterr().err
    assert main(["export", "--slowrun-format", "--data", str(streamed_out), "--out", str(tmp_path / "x")]) == 0
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["fineweb_train.pt", "fineweb_val.pt"]
