"""Models to export: q0's GPT (the plain cpu_small preset and PR #90's extras at a small size) and the
programs a method could forge."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from harness.confined.graph_export import GraphExporter
from q0_reference.model import BUILDER
from harness.formats.snapshots import GRAPH, GRAPH_CONSTANTS, SPEC, sha256_file, write_snapshot


def small_gpts():
    from q0_reference.presets import CPU_SMALL, FINEWEB_PR90

    extras = dataclasses.replace(FINEWEB_PR90.model, n_layer=4, d_model=64, n_head=4, seq_len=32, vocab_size=256)
    plain = dataclasses.replace(CPU_SMALL.model, seq_len=32)
    return {"cpu_small": plain, "pr90_extras": extras}


def export(module, batch: int = 4, seq_len: int = 32) -> tuple[bytes, dict]:
    return GraphExporter().export(module, {"builder": "x:y", "config": {}}, batch, seq_len)


def program_of(data: bytes) -> dict:
    return json.loads(data)


def forged(program: dict) -> bytes:
    return json.dumps(program).encode()


@pytest.fixture
def bigram():
    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(64, 64)

        def forward(self, idx):
            return self.table(idx)

    torch.manual_seed(0)
    return Bigram().eval()


def with_graph(run, tag: str, model, config: dict, epochs: float, exporter: GraphExporter, builder: str | None = None,
               batch: int = 16) -> None:
    """A snapshot as the data server keeps one handed over with its graph (weights, graph, constants, stamp)."""
    spec = {"builder": builder or BUILDER, "config": config}
    snap = write_snapshot(run / "snapshots", tag, model, spec, epochs, int(epochs * 100), {})
    program, constants = exporter.export(model, spec, batch, config["seq_len"])
    (snap.folder / GRAPH).write_bytes(program)
    save_file(constants, str(snap.folder / GRAPH_CONSTANTS))
    stamp = json.loads((snap.folder / SPEC).read_text())
    stamp["graph"] = {"sha256": hashlib.sha256(program).hexdigest(),
                      "constants_sha256": sha256_file(snap.folder / GRAPH_CONSTANTS)}
    (snap.folder / SPEC).write_text(json.dumps(stamp))
