"""Which builders the worker will run: functions or classes defined in the method's (or a trusted) folder."""

from __future__ import annotations

import pytest

from harness.confined.eval_worker import BuilderRefused, resolve_builder


@pytest.fixture
def roots(method_dir):
    return [str(method_dir.resolve())]


def test_a_builder_defined_in_the_method_folder_is_resolved(method_dir, roots):
    (method_dir / "mymodel.py").write_text((method_dir / "mymodel.py").read_text() + "\nfrom torch import nn\n")
    build = resolve_builder("mymodel:build", roots)
    assert build.__module__ == "mymodel" and build.__name__ == "build"
    assert resolve_builder("mymodel:Causal", roots).__name__ == "Causal"  # a class is a builder too


@pytest.mark.parametrize("builder", ["builtins:eval", "os:system", "subprocess:run", "json:loads",
                                     "torch:load", "harness.formats.snapshots:load_snapshot_model"])
def test_code_outside_the_method_and_trusted_folders_is_refused(roots, builder):
    with pytest.raises(BuilderRefused, match="outside the method directory"):
        resolve_builder(builder, roots)


@pytest.mark.parametrize("builder, why", [
    ("mymodel:torch", "must be a Python function or class defined in 'mymodel' itself"),  # an imported module
    ("mymodel:nn", "not module from elsewhere"),
    ("mymodel:missing", "no attribute"),
    ("mymodel", "must look like 'module:function'"),
    ("mymodel:build()", "must look like 'module:function'"),
    ("../mymodel:build", "must look like 'module:function'"),
    ("nosuchmodule:build", "no module named 'nosuchmodule'"),
])
def test_malformed_or_borrowed_builders_are_refused_with_the_reason(roots, builder, why):
    with pytest.raises(BuilderRefused, match=why.replace("(", r"\(").replace(")", r"\)")):
        resolve_builder(builder, roots)


def test_a_class_imported_into_the_method_module_is_not_its_own(method_dir, roots):
    (method_dir / "borrowing.py").write_text("from collections import OrderedDict\n")
    with pytest.raises(BuilderRefused, match="defined in 'borrowing' itself"):
        resolve_builder("borrowing:OrderedDict", roots)
