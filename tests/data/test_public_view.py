"""What the method's process is told about its track: enough to train, never how the data was generated.

The synthetic language regenerates its validation split token for token from its seed and parameters,
so neither the redacted track spec nor the public manifest may hold them, in any key or value.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from harness.data.manifest import MANIFEST, public_manifest
from harness.data.prepare import prepare_track
from harness.data.store import TokenStore
from harness.errors import DataError
from harness.rules.tracks import BUILTIN_TRACKS, SourceSpec, Track

SECRET_SEED = 918273645
SECRET_SPEC = SourceSpec(kind="synthetic", synthetic=(("n_states", 48), ("seed", SECRET_SEED)))
# Every parameter of the language, and of the source around it, written out here rather than read from it.
GENERATOR_KEYS = {"seed", "stream_seed", "n_states", "transition_concentration",
                  "emission_concentration", "zipf_exponent", "mean_doc_tokens", "synthetic", "paths", "base_dir",
                  "dataset", "config", "split"}


def secret_track(**changes) -> Track:
    return dataclasses.replace(BUILTIN_TRACKS["synthetic"], source=SECRET_SPEC, **changes)


def all_keys_and_values(obj) -> tuple[set, list]:
    keys, values = set(), []
    if isinstance(obj, dict):
        for key, value in obj.items():
            keys.add(key)
            inner_keys, inner_values = all_keys_and_values(value)
            keys |= inner_keys
            values += inner_values
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            inner_keys, inner_values = all_keys_and_values(item)
            keys |= inner_keys
            values += inner_values
    else:
        values.append(obj)
    return keys, values


def test_the_full_spec_does_name_the_seed():
    """The baseline the other tests stand on: without redaction the seed is right there."""
    assert str(SECRET_SEED) in json.dumps(secret_track().to_dict())


@pytest.mark.parametrize("track", [BUILTIN_TRACKS["synthetic"], secret_track()], ids=["builtin", "secret-seed"])
def test_public_dict_holds_no_generator_parameter(track):
    public = track.public_dict()
    keys, values = all_keys_and_values(public)
    assert public["source"] == {"kind": "synthetic", "redacted": True}
    assert not keys & GENERATOR_KEYS
    assert SECRET_SEED not in values and 48 not in values  # the spec's seed and n_states
    assert str(SECRET_SEED) not in json.dumps(public)


def test_the_redacted_track_holds_no_generator_parameter_either():
    redacted = secret_track().redacted()
    assert redacted.source == SourceSpec(kind="synthetic", redacted=True)
    assert str(SECRET_SEED) not in json.dumps(redacted.to_dict())


def test_public_dict_round_trips_with_what_a_method_needs():
    track = secret_track(defaults=(("lr", 0.01),))
    public = json.loads(json.dumps(track.public_dict()))  # as it crosses worker.json
    back = Track.from_dict(public)
    for name in ("name", "description", "tokenizer", "val_tokens", "train_tokens", "seq_len", "fitness_tokens",
                 "reference_curve", "defaults"):
        assert getattr(back, name) == getattr(track, name), name
    assert back.val_windows == 32_768 // 129
    assert back.source.kind == "synthetic" and back.source.redacted and back.source.synthetic == ()
    assert json.loads(json.dumps(back.public_dict())) == public


def test_a_local_track_loses_its_paths_and_still_loads():
    public = BUILTIN_TRACKS["webtext"].public_dict()
    assert public["source"] == {"kind": "local", "redacted": True}
    assert "webtext/" not in json.dumps(public)
    assert Track.from_dict(public).tokenizer.vocab_size == 2048


def test_a_redacted_track_refuses_to_prepare(tmp_path):
    with pytest.raises(DataError, match="redacted"):
        prepare_track(Track.from_dict(secret_track().public_dict()), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_the_ordinary_dict_is_unchanged():
    """Prepared manifests store track.to_dict() and compare it on re-preparation: no new key may appear."""
    source = BUILTIN_TRACKS["synthetic"].to_dict()["source"]
    assert set(source) == {"kind", "paths", "text_field", "txt_separator", "dataset", "config", "split",
                           "synthetic", "base_dir"}


def test_public_manifest_reads_the_training_split_and_reveals_no_generator(tmp_path):
    track = secret_track(val_tokens=2_000, train_tokens=6_000, seq_len=32, fitness_tokens=256)
    manifest = prepare_track(track, tmp_path / "full", progress=False, log=lambda _: None).manifest
    assert str(SECRET_SEED) in json.dumps(manifest)  # the full manifest does hold it

    public = public_manifest(manifest)
    text = json.dumps(public)
    keys, _ = all_keys_and_values(public)
    assert str(SECRET_SEED) not in text
    assert not keys & (GENERATOR_KEYS | {"source", "request", "best_val_loss", "val", "data_hash", "hash",
                                         "first_document", "last_document"})
    assert manifest["tokenizer"]["hash"] not in text and manifest["data_hash"] not in text

    # the method's folder: the training files and the public manifest, and nothing else
    method_view = tmp_path / "train_data"
    method_view.mkdir()
    for name in ("train.tokens.bin", "train.docs.bin"):
        shutil.copyfile(tmp_path / "full" / name, method_view / name)
    (method_view / MANIFEST).write_text(json.dumps(public), encoding="utf-8")
    seen, full = TokenStore.open(method_view, "train"), TokenStore.open(tmp_path / "full", "train")
    np.testing.assert_array_equal(seen.tokens, full.tokens)
    np.testing.assert_array_equal(seen.doc_starts, full.doc_starts)
    assert (seen.bos_id, seen.vocab_size) == (511, 512)
    with pytest.raises(DataError, match="no split 'val'"):
        TokenStore.open(method_view, "val")
