"""`slowrun calibrate` on a miniature track: a curve from runs on growing fresh data, or a clear refusal."""

from __future__ import annotations

import json
import textwrap

import pytest

from harness.run.calibrate import CalibrationRequest, calibrate
from harness.eval.efficiency import data_efficiency, load_reference_curve
from harness.errors import SlowrunError
from tests.data.test_bad_input import write_docs

TINY = (("d_model", "32"), ("n_layer", "1"), ("n_head", "2"), ("batch_size", "4"), ("warmup_steps", "2"))


def write_tracks(tmp_path, n_docs: int):
    write_docs(tmp_path / "corpus.jsonl", n_docs)
    toml = tmp_path / "tracks.toml"
    toml.write_text(textwrap.dedent("""
        [tracks.mini]
        val_tokens = 2000
        train_tokens = 3000
        seq_len = 32
        source = { kind = "local", paths = ["corpus.jsonl"] }
        tokenizer = { kind = "byte-bpe", vocab_size = 300 }
    """))
    return str(toml)


def test_calibrate_writes_a_curve_from_fresh_data(tmp_path):
    tracks = write_tracks(tmp_path, 400)
    out = tmp_path / "mini.json"
    calibrate(CalibrationRequest(track="mini", factors=(1, 2), overrides=TINY, data_dir=tmp_path / "prepared",
                                 work_dir=tmp_path / "work", out=out, track_files=(tracks,), progress=False))
    curve = load_reference_curve(out)
    assert curve.train_tokens == 3000 and curve.track == "mini"
    tokens = [t for t, _ in curve.points]
    assert tokens == sorted(tokens) and 2900 < tokens[0] <= 3000
    # both runs were scored on the base track's validation split
    val_hashes = {json.loads((tmp_path / "work" / f"mini-x{k}" / "manifest.json").read_text())["splits"]["val"]
                  ["tokens_sha256"] for k in (1, 2)}
    base = json.loads((tmp_path / "prepared" / "manifest.json").read_text())["splits"]["val"]["tokens_sha256"]
    assert val_hashes == {base}
    best = min(loss for _, loss in curve.points)
    assert data_efficiency(best - 10.0, curve).bound is not None  # off the table: a bound, not a number


def test_calibrate_refuses_when_the_source_is_too_small(tmp_path):
    tracks = write_tracks(tmp_path, 120)
    with pytest.raises(SlowrunError, match=r"cannot supply 8x the training tokens .* Use fewer --factors"):
        calibrate(CalibrationRequest(track="mini", factors=(1, 8), overrides=TINY, data_dir=tmp_path / "prepared",
                                     work_dir=tmp_path / "work", out=tmp_path / "c.json", track_files=(tracks,),
                                     progress=False))
    assert not (tmp_path / "c.json").exists()
