"""Snapshots: what a method hands to the harness for evaluation.

A snapshot is a folder `snapshots/<tag>/` with the weights (`model.safetensors`) and `spec.json`: the build
spec (a `module:function` builder and the JSON config it takes), the epoch stamp from the meter, and the
method's own metadata. It is written into a temporary folder and renamed, so a crash never leaves a
snapshot that loads half a model. Evaluation rebuilds the model from the spec alone, in another process,
so a snapshot must be self-describing.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import SlowrunError

TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
WEIGHTS = "model.safetensors"
SPEC = "spec.json"
GRAPH = "graph.json"  # the exported forward (confined/graph_export, eval/graph_load), beside the weights when the method exported it
GRAPH_CONSTANTS = "graph-constants.safetensors"  # the tensors that graph holds besides the weights
# The most one file of a snapshot may hold: the data server refuses a larger one from the method, and a
# verifier refuses to fetch a larger one from a bundle's URL (256 GiB: a 100B-parameter model in float16).
MAX_SNAPSHOT_BYTES = 256 << 30


class SnapshotError(SlowrunError):
    pass


@dataclass(frozen=True)
class Snapshot:
    tag: str
    epochs: float
    train_tokens: int
    builder: str
    config: dict
    meta: dict
    folder: Path
    weights_sha256: str | None = None  # stamped by the data server when it takes the snapshot in
    graph: dict | None = None  # the exported forward's stamp ({sha256, constants_sha256, ...}) or {refused: why}

    @property
    def has_graph(self) -> bool:
        return isinstance(self.graph, dict) and isinstance(self.graph.get("sha256"), str)

    def to_summary(self) -> dict:
        return {"tag": self.tag, "epochs": self.epochs, "train_tokens": self.train_tokens, "meta": self.meta}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MB blocks (snapshot weights and evaluation caches)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def build_spec_of(model, spec: dict | None) -> dict:
    """The build spec: given explicitly, or from `model.build_spec()` / a `build_spec` dict attribute."""
    if spec is None:
        attr = getattr(model, "build_spec", None)
        spec = attr() if callable(attr) else attr
    if not isinstance(spec, dict) or "builder" not in spec or "config" not in spec:
        raise SnapshotError(
            "save_snapshot needs the model's build spec: give the model a build_spec() method or pass "
            "spec={'builder': 'package.module:function', 'config': {...}} (the function rebuilds the model "
            "from the config)")
    if not isinstance(spec["builder"], str) or ":" not in spec["builder"]:
        raise SnapshotError(f"build spec builder {spec['builder']!r} must look like 'package.module:function'")
    try:
        json.dumps(spec["config"])
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"build spec config must be JSON-able ({exc})") from None
    return {"builder": spec["builder"], "config": spec["config"]}


def write_snapshot(root: Path, tag: str, model, spec: dict, epochs: float, train_tokens: int, meta: dict) -> Snapshot:
    from safetensors.torch import save_file

    if not TAG_PATTERN.match(tag):
        raise SnapshotError(f"snapshot tag {tag!r} must be 1-100 letters, digits, '.', '_' or '-' (and not start "
                            "with a punctuation mark)")
    try:
        meta_json = json.loads(json.dumps(meta or {}, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot {tag!r}: meta must be JSON-able with finite numbers ({exc})") from None
    root.mkdir(parents=True, exist_ok=True)
    final = root / tag
    if final.exists():
        raise SnapshotError(f"snapshot tag {tag!r} is already used in this run; tags must be unique")
    tmp = Path(tempfile.mkdtemp(prefix=f".{tag}.tmp-", dir=root))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        record = {"tag": tag, "epochs": epochs, "train_tokens": train_tokens, **spec, "meta": meta_json}
        (tmp / SPEC).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Snapshot(tag, epochs, train_tokens, spec["builder"], spec["config"], meta_json, final)


def read_snapshot(folder: Path) -> Snapshot:
    path = Path(folder) / SPEC
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{path}: unreadable snapshot spec ({exc})") from None
    return Snapshot(raw["tag"], float(raw["epochs"]), int(raw["train_tokens"]), raw["builder"], raw["config"],
                    raw.get("meta", {}), Path(folder), raw.get("weights_sha256"),
                    raw.get("graph") if isinstance(raw.get("graph"), dict) else None)


def list_snapshots(root: Path) -> list[Snapshot]:
    """Completed snapshots in the order they were taken (by training tokens, then tag)."""
    if not root.is_dir():
        return []
    snaps = [read_snapshot(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(snaps, key=lambda s: (s.train_tokens, s.tag))


def resolve_builder(builder: str):
    module_name, _, function = builder.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, function)
    except (ImportError, AttributeError) as exc:
        raise SnapshotError(f"cannot import the snapshot builder {builder!r} ({exc})") from None


def load_snapshot_model(snapshot: Snapshot, device: str = "cpu"):
    """Rebuild the model from its spec and load the weights (strictly: every tensor must match)."""
    from safetensors.torch import load_file

    model = resolve_builder(snapshot.builder)(snapshot.config)
    state = load_file(str(snapshot.folder / WEIGHTS), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SnapshotError(f"{snapshot.folder}: weights do not fit the rebuilt model "
                            f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
