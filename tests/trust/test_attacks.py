"""Every promise of the trust boundary, attacked by a method directory that tries to break it.

Each method under tests/trust/methods is a plausible attack (or accident): reading the validation split,
forging the files the harness reads back, patching the meter, leaving without reporting, signalling the
harness, leaving daemons behind, hanging, handing over forbidden results. Each test runs it through the
real runner and checks that the record tells what happened and that the harness's numbers held.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from harness.formats.records import validate_record
from harness.run.runner import RunRequest, run_method

METHODS = Path(__file__).parent / "methods"
PROJECT = Path(__file__).resolve().parents[2]


def run(name: str, data: Path, tmp_path: Path, epochs: float = 1.0, target: str = "", **kw) -> tuple[Path, dict]:
    run_dir = run_method(RunRequest(method_dir=METHODS / name, track="synthetic", epochs=epochs, data_dir=data,
                                    out=tmp_path / f"run-{name}", progress=False,
                                    overrides=(("target", target),), **kw))
    record = json.loads((run_dir / "record.json").read_text())
    assert validate_record(record) == []
    return run_dir, record


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def attempts(run_dir: Path) -> dict:
    return next(line["attempts"] for line in metrics(run_dir) if "attempts" in line)


def processes_with(marker: str) -> list[int]:
    """Processes the method started: their command lines end in `echo MARKER` (the runner's own command
    line carries the marker too, as `target=MARKER`, so that form is not looked for)."""
    marker = f"echo {marker}"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("target", ["val.tokens.bin", "manifest.json", "train.tokens.bin", "RUN_SPEC"])
def test_reading_files_it_was_not_given_fails_the_run(target, synthetic_data, tmp_path):
    path = tmp_path / "run-read_files" / "run.json" if target == "RUN_SPEC" else synthetic_data / target
    run_dir, record = run("read_files", synthetic_data, tmp_path, target=str(path))
    assert record["status"] == "failed"
    assert record["error"]["type"] == "PermissionError", record["error"]
    assert record["metered"]["train_tokens"] == 0 and record["result"] is None
    assert record["sandbox"]["kind"] == "landlock"


def test_forged_files_are_refused_and_never_read_back(synthetic_data, tmp_path):
    before = {p.name: p.read_bytes() for p in synthetic_data.iterdir() if p.is_file()}
    run_dir, record = run("forge_files", synthetic_data, tmp_path, target=str(synthetic_data))
    tried = attempts(run_dir)
    assert tried and all(outcome != "allowed" for outcome in tried.values()), tried
    assert record["status"] == "ok"
    assert [s["tag"] for s in record["snapshots"]] == ["honest"]
    assert 2.1 < record["result"]["val_loss"] < 6.3  # a real score, not a forged one
    after = {p.name: p.read_bytes() for p in synthetic_data.iterdir() if p.is_file()}
    assert after == before  # the prepared split is untouched


def test_patching_the_meter_in_the_method_process_changes_nothing(synthetic_data, tmp_path):
    _, record = run("patch_meter", synthetic_data, tmp_path, epochs=1.0)
    assert record["status"] == "budget-exceeded"
    assert record["metered"]["epochs"] <= 1.0
    assert record["metered"]["train_tokens"] > 0.9 * record["metered"]["epoch_tokens"]


def test_leaving_without_a_report_is_not_ok(synthetic_data, tmp_path):
    _, record = run("exit_unreported", synthetic_data, tmp_path)
    assert record["status"] == "failed"
    assert record["error"]["type"] == "WorkerDied"
    # what was handed over before is still evaluated
    assert [s["tag"] for s in record["snapshots"]] == ["honest"]


def test_the_method_cannot_signal_the_harness(synthetic_data, tmp_path):
    run_dir, record = run("signal_harness", synthetic_data, tmp_path)
    tried = attempts(run_dir)
    assert record["status"] == "ok"
    # the namespace's init is outside the method's Landlock domain; the supervisor and the runner are not
    # even visible from its own PID namespace (and refused like the init where there is none)
    assert tried["parent"] == "PermissionError", tried
    if record["sandbox"]["network"]["processes"] == "private":
        assert tried["above_parent"] == "invisible"
    else:
        assert tried["above_parent"] == "PermissionError"


def test_daemons_die_with_the_run(synthetic_data, tmp_path):
    marker = f"slowrun-daemon-{uuid.uuid4().hex}"
    run_dir, record = run("leave_daemon", synthetic_data, tmp_path, target=marker)
    assert record["status"] == "ok"
    assert processes_with(marker) == []
    supervisor = json.loads((run_dir / "supervisor.json").read_text())
    # the setsid'ed shell and the double-forked one: killed by the supervisor, or, in the method's own PID
    # namespace, by the kernel when the namespace's init exits
    assert supervisor["killed"] >= 2 or supervisor["pids"] == "private"


def test_a_hanging_method_is_stopped_at_the_timeout_with_its_children(synthetic_data, tmp_path):
    marker = f"slowrun-hang-{uuid.uuid4().hex}"
    started = time.monotonic()
    # 20 s: the method's start, half an epoch and its first snapshot's export must fit before the timeout on
    # a busy machine too; what is tested is that the hang is ended, not how soon
    run_dir, record = run("sleep_forever", synthetic_data, tmp_path, target=marker, timeout_s=20.0)
    assert time.monotonic() - started < 120
    assert record["status"] == "timeout"
    assert "--timeout" in record["error"]["message"]
    assert processes_with(marker) == []
    # what it handed over before the timeout is evaluated
    assert [s["tag"] for s in record["snapshots"]] == ["before-hang"]
    assert record["result"] is not None


def _hanging_run(marker: str, out: Path, data: Path) -> subprocess.Popen:
    """`slowrun run` of the sleep_forever method, returned once the method hangs (its process carries `marker`)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    runner = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(METHODS / "sleep_forever"),
                               "--track", "synthetic", "--epochs", "1", "--data", str(data),
                               "--out", str(out), "--set", f"target={marker}", "--quiet"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not processes_with(marker):
        time.sleep(0.1)
    assert processes_with(marker), "the method never reached its hang"
    return runner


def test_sigterm_to_slowrun_run_leaves_no_process_and_a_record(synthetic_data, tmp_path):
    marker = f"slowrun-term-{uuid.uuid4().hex}"
    out = tmp_path / "run-term"
    runner = _hanging_run(marker, out, synthetic_data)
    runner.send_signal(signal.SIGTERM)
    runner.wait(timeout=60)
    assert runner.returncode != 0
    assert processes_with(marker) == []
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "failed" and record["error"]["type"] == "Interrupted"
    assert [s["tag"] for s in record["snapshots"]] == [] and record["result"] is None


def test_forbidden_results_are_refused_and_huge_weights_normalised(synthetic_data, tmp_path):
    run_dir, record = run("bad_results", synthetic_data, tmp_path)
    assert attempts(run_dir) == {"escaping_tag": "ContractError", "nan_weight": "ContractError"}
    assert not (tmp_path / "escaped").exists() and not (run_dir / "escaped").exists()
    assert record["status"] == "ok"
    assert record["ensemble"]["source"] == "method"
    assert sorted((m["tag"], m["weight"]) for m in record["ensemble"]["members"]) == [("a", 0.5), ("b", 0.5)]


def test_slowrun_check_imports_the_method_in_the_sandbox(tmp_path):
    """Importing a submission runs its code: `slowrun check` must not give that code the maintainer's rights."""
    from harness.run.entry_check import check_method

    victim = tmp_path / "maintainer-file.txt"
    victim.write_text("keep me")
    method = tmp_path / "import_time_attack"
    method.mkdir()
    (method / "method.toml").write_text((METHODS / "read_files" / "method.toml").read_text())
    (method / "train.py").write_text(f"open({str(victim)!r}, 'w').write('gone')\n\ndef main(ctx):\n    pass\n")
    _, problems = check_method(method)
    assert victim.read_text() == "keep me"
    assert len(problems) == 1 and "PermissionError" in problems[0], problems


def test_a_model_defined_in_the_method_directory_is_evaluated(synthetic_data, tmp_path):
    _, record = run("own_model", synthetic_data, tmp_path)
    assert record["status"] == "ok", record["error"]
    assert record["invalid_snapshots"] == []
    assert 2.1 < record["result"]["val_loss"] < 6.238  # learned something; above the track's floor


def test_the_method_process_holds_only_the_confined_side(synthetic_data, tmp_path):
    """What the import contracts say statically (pyproject.toml, tests/test_layers.py), seen at run time:
    none of the modules forbidden to confined code is loaded in the process that runs the method."""
    import tomllib

    run_dir, record = run("list_modules", synthetic_data, tmp_path)
    assert record["status"] == "ok"
    line = next(m for m in metrics(run_dir) if m.get("event") == "modules")
    loaded = set(",".join(v for k, v in sorted(line.items()) if k.startswith("part")).split(","))
    assert {"harness.confined.context", "harness.errors"} <= loaded  # the report is real (the worker runs as __main__)
    contracts = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    forbidden = next(c for c in contracts if c["id"] == "confined")["forbidden_modules"]
    held = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden))
    assert held == [], f"the method's process holds harness-side modules: {held}"


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_sigterm_to_every_process_of_the_run_records_an_interruption(synthetic_data, tmp_path):
    """A scheduler stops a job by signalling every process in it: the method's processes may die of the signal
    before the runner has handled its own. The record must still say Interrupted (so the run resumes), not
    that a worker died."""
    marker = f"slowrun-all-{uuid.uuid4().hex}"
    out = tmp_path / "run-all"
    runner = _hanging_run(marker, out, synthetic_data)
    for pid in [*reversed(_descendants(runner.pid)), runner.pid]:  # the method's processes first
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    runner.wait(timeout=60)
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "failed" and record["error"]["type"] == "Interrupted", record["error"]
