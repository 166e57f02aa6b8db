"""Running an attacking method through the real runner, and reading what it logged."""

from __future__ import annotations

import json
from pathlib import Path

from harness.formats.records import validate_record
from harness.run.runner import RunRequest, run_method

METHODS = Path(__file__).parent / "methods"


def run(name: str, data: Path, tmp_path: Path, epochs: float = 1.0, target: str | None = None,
        overrides: tuple = (), **kw) -> tuple[Path, dict]:
    """Run `tests/trust/methods/<name>` on the synthetic track; its record, checked against the schema."""
    overrides = tuple(overrides) + ((("target", target),) if target is not None else ())
    run_dir = run_method(RunRequest(method_dir=METHODS / name, track="synthetic", epochs=epochs, data_dir=data,
                                    out=tmp_path / f"run-{name}", progress=False, overrides=overrides, **kw))
    record = json.loads((run_dir / "record.json").read_text())
    assert validate_record(record) == []
    return run_dir, record


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def write_method(folder: Path, code: str) -> Path:
    """A one-file method directory named after `folder` (a test's own attacker, written where it runs)."""
    folder.mkdir()
    (folder / "method.toml").write_text(f'[method]\nname = "{folder.name}"\nentry = "train:main"\ntracks = ["*"]\n')
    (folder / "train.py").write_text(code)
    return folder
