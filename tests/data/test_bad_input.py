"""Bad input: one clear error naming the file (and line), and nothing half-written left behind."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.data.prepare import prepare_track
from harness.errors import DataError
from tests.data.helpers import local_track

WORDS = "the quick brown fox jumps over the lazy dog while seven wizards quietly box jumping frogs".split()


def write_docs(path: Path, n_docs: int, words_per_doc: int = 60) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_docs):
            text = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words_per_doc))
            f.write(json.dumps({"text": f"doc {i}: {text}"}) + "\n")
    return path


def assert_nothing_left(out: Path):
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == []


def prepare_expecting(tmp_path, files, match, **track_kwargs):
    out = tmp_path / "out"
    with pytest.raises(DataError, match=match):
        prepare_track(local_track(files, **track_kwargs), out, progress=False)
    assert_nothing_left(out)


def test_missing_file(tmp_path):
    prepare_expecting(tmp_path, [tmp_path / "nope.jsonl"], r"nope\.jsonl: no such file")


def test_empty_source(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    prepare_expecting(tmp_path, [empty], r"empty\.jsonl is empty")


def test_source_smaller_than_budget(tmp_path):
    small = write_docs(tmp_path / "small.jsonl", 5)
    prepare_expecting(tmp_path, [small], r"small\.jsonl ran out after 5 documents, which filled only [\d,]+ tokens; the track needs 8,000")


def test_line_that_is_not_json(tmp_path):
    bad = write_docs(tmp_path / "bad.jsonl", 40)
    lines = bad.read_text().splitlines()
    lines[6] = '{"text": "unterminated'
    bad.write_text("\n".join(lines) + "\n")
    prepare_expecting(tmp_path, [bad], r"bad\.jsonl:7: not valid JSON")


def test_missing_text_field(tmp_path):
    bad = write_docs(tmp_path / "fields.jsonl", 40)
    lines = bad.read_text().splitlines()
    lines[11] = json.dumps({"body": "no text here"})
    bad.write_text("\n".join(lines) + "\n")
    prepare_expecting(tmp_path, [bad], r"fields\.jsonl:12: missing text field 'text' \(fields: body")


def test_invalid_utf8(tmp_path):
    bad = write_docs(tmp_path / "latin.jsonl", 40)
    raw = bad.read_bytes().split(b"\n")
    raw[2] = b'{"text": "caf\xe9"}'
    bad.write_bytes(b"\n".join(raw))
    prepare_expecting(tmp_path, [bad], r"latin\.jsonl:3: invalid UTF-8")


def test_invalid_utf8_in_gzip(tmp_path):
    good = write_docs(tmp_path / "x.jsonl", 3).read_bytes()
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(good + b'{"text": "\xff\xfe"}\n'))
    prepare_expecting(tmp_path, [bad], r"bad\.jsonl\.gz:4: invalid UTF-8")


def test_existing_output_with_other_hash_is_refused_and_kept(tmp_path):
    data = write_docs(tmp_path / "docs.jsonl", 200)
    out = tmp_path / "out"
    first = prepare_track(local_track([data]), out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = local_track([data], val_tokens=2_500)
    with pytest.raises(DataError, match=r"out: already holds something else \(data hash .*--force"):
        prepare_track(other, out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # the same request again is recognised and left alone
    assert prepare_track(local_track([data]), out, progress=False).reused
    replaced = prepare_track(other, out, progress=False, force=True)
    assert replaced.manifest["data_hash"] != first.manifest["data_hash"]
    assert replaced.manifest["splits"]["val"]["tokens"] == 2_500
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def test_output_folder_that_is_not_prepared_data_is_refused(tmp_path):
    data = write_docs(tmp_path / "docs.jsonl", 200)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a prepared track"):
        prepare_track(local_track([data]), out, progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_cli_prints_one_clear_error(tmp_path, capsys):
    code = main(["prepare", "--track", "webtext", "--source", str(tmp_path / "gone.jsonl"),
                 "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "gone.jsonl: no such file" in err
    assert "Traceback" not in err


def gpt2_track(files, **kwargs):
    from harness.rules.tracks import TokenizerSpec
    from tests.conftest import shared_path

    ranks = str(shared_path("gpt2", "r50k_base.tiktoken"))
    return local_track(files, tokenizer=TokenizerSpec(kind="gpt2", ranks_path=ranks), **kwargs)


def test_error_mid_stream_removes_the_half_written_split(tmp_path, monkeypatch):
    """GPT-2 encodes while it streams, so the bad line is met after the temporary folder exists."""
    import harness.data.prepare as prepare

    made = []
    real_mkdtemp = prepare.tempfile.mkdtemp
    monkeypatch.setattr(prepare.tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    data = write_docs(tmp_path / "docs.jsonl", 300)
    lines = data.read_text().splitlines()
    lines[250] = "{not json"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"docs.jsonl:251: not valid JSON"):
        prepare_track(gpt2_track([data], val_tokens=2_000, train_tokens=20_000), out, progress=False)
    assert len(made) == 1  # the temporary folder existed when the error came
    assert_nothing_left(out)


def test_error_while_writing_keeps_the_previous_preparation(tmp_path, monkeypatch):
    import harness.data.prepare as prepare

    data = write_docs(tmp_path / "docs.jsonl", 200)
    out = tmp_path / "out"
    prepare_track(local_track([data]), out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def write_then_fail(tmp, *args, **kwargs):
        (tmp / "val.tokens.bin").write_bytes(b"partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(prepare, "write_splits", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        prepare_track(local_track([data], val_tokens=2_500), out, progress=False, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def test_same_request_on_changed_source_is_refused_until_forced(tmp_path, capsys):
    """The request matches, but the file's content changed, so the data hash does not."""
    data = write_docs(tmp_path / "docs.jsonl", 200)
    out = tmp_path / "out"
    first = prepare_track(gpt2_track([data]), out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    data.write_text(data.read_text().replace("fox", "cat"))
    with pytest.raises(DataError, match=r"out: holds data with hash .* pass --force"):
        prepare_track(gpt2_track([data]), out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    ranks = gpt2_track([data]).tokenizer.ranks_path
    tracks = tmp_path / "tracks.toml"
    tracks.write_text(f"""
[tracks.t]
description = "test track"
val_tokens = 2000
train_tokens = 6000
seq_len = 32
fitness_tokens = 0
source = {{ kind = "local", paths = ["{data}"] }}
tokenizer = {{ kind = "gpt2", ranks_path = "{ranks}" }}
""")
    assert main(["prepare", "--track", "t", "--tracks", str(tracks), "--out", str(out), "--quiet"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["prepare", "--track", "t", "--tracks", str(tracks), "--out", str(out), "--quiet", "--force"]) == 0
    from harness.data.manifest import read_manifest

    assert read_manifest(out)["data_hash"] != first.manifest["data_hash"]
