"""Where a run folder keeps what: the names every process agrees on.

Harness storage sits at the top (``run.json``, ``snapshots/``, ``checkpoint/``, metrics, the record); the
method's two writable folders are below ``sandbox/``. The runner lays the folder out, the data server
fills it, the cluster job and `slowrun status` read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SESSIONS = "sessions.json"  # training seconds of every session of this run, in order


STOP_FILE = "stop.json"  # node 0 says here that the job is being stopped; the other nodes' runners watch it


@dataclass(frozen=True)
class RunLayout:
    """Where a run keeps what: harness storage at the top, the method's two writable folders below
    `sandbox/`. The method is told only `scratch` and `outbox`."""

    root: Path

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoint"

    @property
    def scratch(self) -> Path:
        return self.root / "sandbox" / "scratch"

    @property
    def outbox(self) -> Path:
        return self.root / "sandbox" / "outbox"

    def metrics(self, rank: int) -> Path:
        return self.root / ("metrics.jsonl" if rank == 0 else f"metrics-rank{rank}.jsonl")

    def checkpoint_index(self, rank: int) -> Path:
        return self.checkpoints / f"rank{rank}.json"
