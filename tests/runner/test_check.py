"""`slowrun check`: every problem of a broken method directory at once."""

from __future__ import annotations

from harness.cli import main
from harness.formats.method_toml import method_hash
from harness.run.entry_check import check_method

BROKEN = """
[method]
description = 3
entry = "missing_module:main"
tracks = ["synthetic", "no-such-track"]
colour = "red"

[hparams]
lr = 0.1
layers = 4
bad = {nested = 1}

[track_hparams.synthetic]
lr = "fast"
depth = 2
"""


def test_broken_method_lists_every_problem(tmp_path, capsys):
    (tmp_path / "method.toml").write_text(BROKEN)
    spec, problems = check_method(tmp_path)
    text = "\n".join(problems)
    assert spec is None
    for expected in ("[method].colour: unknown key", "[method].name: missing", "[method].description: must be a string",
                     "unknown track 'no-such-track'", "module 'missing_module' not found", "[hparams].bad",
                     "[track_hparams.synthetic].lr: is str, but the default in [hparams] is number",
                     "[track_hparams.synthetic].depth: not in [hparams]"):
        assert expected in text, expected
    assert main(["check", str(tmp_path)]) == 1
    assert "8 problem(s)" in capsys.readouterr().err


def test_a_method_name_is_one_line_without_control_characters(tmp_path):
    """The name reaches the board, its tables and plots: a NUL, a newline or 10,000 characters say what to fix."""
    (tmp_path / "train.py").write_text("def main(ctx):\n    pass\n")
    for bad in ('"q0\\u0000"', '"""q0\nsecond line"""', '"' + "m" * 101 + '"'):
        (tmp_path / "method.toml").write_text(f'[method]\nname = {bad}\nentry = "train:main"\n')
        spec, problems = check_method(tmp_path)
        assert spec is None and any(p.startswith("[method].name: must be one line") for p in problems), bad
    (tmp_path / "method.toml").write_text('[method]\nname = "  hyper-epoch q0 (PR #90)  "\nentry = "train:main"\n')
    assert check_method(tmp_path)[0].name == "hyper-epoch q0 (PR #90)"


def test_entry_that_fails_to_import_or_has_wrong_signature(tmp_path):
    (tmp_path / "method.toml").write_text('[method]\nname = "m"\nentry = "train:main"\n')
    (tmp_path / "train.py").write_text("import not_a_real_package\n")
    assert "importing 'train' fails: ModuleNotFoundError" in check_method(tmp_path)[1][0]
    (tmp_path / "train.py").write_text("def main():\n    pass\n")
    assert "must take exactly one argument" in check_method(tmp_path)[1][0]


def test_the_shipped_methods_pass(capsys):
    assert main(["check", "submissions/single_model"]) == 0
    assert "single_model: ok" in capsys.readouterr().out


def test_hparam_overrides_are_typed_by_their_defaults(tmp_path):
    import pytest

    from harness.formats.method_toml import MethodError

    spec, _ = check_method("submissions/single_model")
    values = spec.resolved_hparams("synthetic", {"lr": "0.01", "batch_size": "4", "mlp": "swiglu"})
    assert values["lr"] == 0.01 and values["batch_size"] == 4 and values["mlp"] == "swiglu"
    import tomllib

    table = tomllib.loads(open("submissions/single_model/method.toml").read())
    assert table["track_hparams"]["fineweb"]["d_model"] != table["hparams"]["d_model"]
    assert spec.resolved_hparams("fineweb")["d_model"] == table["track_hparams"]["fineweb"]["d_model"]  # the track's
    with pytest.raises(MethodError, match="batch_size=four: expected an integer"):
        spec.resolved_hparams("synthetic", {"batch_size": "four"})
    with pytest.raises(MethodError, match="unknown hyperparameter"):
        spec.resolved_hparams("synthetic", {"lrr": "1"})


def test_method_hash_follows_content(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    first = method_hash(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.cpython.pyc").write_bytes(b"junk")
    assert method_hash(tmp_path) == first
    (tmp_path / "a.py").write_text("x = 2\n")
    assert method_hash(tmp_path) != first


def test_a_fifo_in_a_method_folder_is_a_problem_not_a_hang(tmp_path):
    """Reading a FIFO with no writer blocks for ever: hashing the folder must refuse it, and `check` names it."""
    import os

    import pytest

    from harness.formats.method_toml import MethodError, read_method

    (tmp_path / "method.toml").write_text('[method]\nname = "m"\nentry = "train:main"\n')
    (tmp_path / "train.py").write_text("def main(ctx):\n    pass\n")
    os.mkfifo(tmp_path / "data.bin")
    with pytest.raises(MethodError, match="data.bin: not a regular file"):
        method_hash(tmp_path)
    spec, problems = read_method(tmp_path)
    assert spec is None and any("data.bin: not a regular file" in p for p in problems)
