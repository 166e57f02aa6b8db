"""What the closed sandbox costs: a whole run, and the supervisor's start, with and without it, in one run.

"File-level" is the sandbox before it was closed: Landlock, no_new_privs and limits, but the method's tree
on the host's network and PID namespace, and the data server serving any process that holds the token.
"Closed" is what runs now: a network namespace with only loopback and a PID namespace with its own
`/proc` for the method's tree, a network namespace for each evaluation worker, and the data server
checking every connection's process against the run's tree. (The environment allow-list and the
capability drop cost microseconds and are in both.)

Two figures, each the median over rounds of a paired ratio (closed / file-level, the pair run back to
back in alternating order so the machine's drift falls on both):

- `run_ratio`: `run_method` of a method that draws one batch and hands over one snapshot, end to end
  (supervisor, worker start and torch import, hello, the batch, the snapshot's evaluation, the record):
  nearly all of such a run is start-up and ending, so this is the most the closing can add to a run.
- `supervisor_ratio`: the supervisor starting `python -c pass` and reporting its end: the namespaces'
  own cost, without torch's import around it.

Run: pytest tests/bench/test_bench_sandbox_startup.py -m bench -s
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path


from harness.data.prepare import prepare_track
from harness.run.runner import RunRequest, run_method
from harness.sandbox.supervisor import Supervisor
from harness.server.dataserver import DataServer
from harness.rules.tracks import get_track
from tests.bench.timing import report

ROUNDS = int(os.environ.get("SLOWRUN_BENCH_ROUNDS", "5"))
METHOD = Path(__file__).parent / "methods" / "one_batch"


@contextmanager
def file_level_only(monkeypatch):
    """The runner as it was before the sandbox was closed: no namespaces, no process check."""
    with monkeypatch.context() as patch:
        plain_init, plain_start = Supervisor.__init__, DataServer.start

        def init(self, *args, **kw):
            kw["private_network"] = kw["private_pids"] = False
            plain_init(self, *args, **kw)

        def start(self, *args, **kw):
            kw["tree_only"] = False
            return plain_start(self, *args, **kw)

        patch.setattr(Supervisor, "__init__", init)
        patch.setattr(DataServer, "start", start)
        yield


def _one_run(data: Path, out: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    run_dir = run_method(RunRequest(method_dir=METHOD, track="synthetic", epochs=1.0, data_dir=data, out=out,
                                    progress=False))
    seconds = time.perf_counter() - started
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "ok", record["error"]
    return seconds, record


def _supervised_pass(tmp: Path, closed: bool) -> float:
    started = time.perf_counter()
    sup = Supervisor([sys.executable, "-c", "pass"], env=dict(os.environ), timeout_s=60,
                     status_file=tmp / "status.json", private_network=closed, private_pids=closed)
    sup.start()
    result = sup.wait()
    assert result.exit_code == 0, result
    return time.perf_counter() - started


def test_closed_sandbox_start_up_cost(benchmark, tmp_path, monkeypatch):
    data = tmp_path / "data"
    prepare_track(get_track("synthetic"), data, progress=False)
    monkeypatch.setenv("SLOWRUN_ALLOW_READ", str(Path(__file__).resolve().parents[1]))
    runs = {"closed": [], "file": []}
    supervised = {"closed": [], "file": []}
    networks = {}

    def measure(mode: str, round_: int) -> None:
        if mode == "file":
            with file_level_only(monkeypatch):
                seconds, record = _one_run(data, tmp_path / f"run-{mode}-{round_}")
                supervised[mode].append(_supervised_pass(tmp_path, False))
        else:
            seconds, record = _one_run(data, tmp_path / f"run-{mode}-{round_}")
            supervised[mode].append(_supervised_pass(tmp_path, True))
        runs[mode].append(seconds)
        networks[mode] = record["sandbox"]["network"]["kind"]

    def rounds():
        _one_run(data, tmp_path / "warm")  # page cache, bytecode, the prepared data's first read
        for round_ in range(ROUNDS):
            for mode in (("closed", "file") if round_ % 2 == 0 else ("file", "closed")):
                measure(mode, round_)

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    assert networks == {"closed": "private", "file": "host"}, networks  # the two sides differ as described
    run_ratio = statistics.median(c / f for c, f in zip(runs["closed"], runs["file"]))
    sup_ratio = statistics.median(c / f for c, f in zip(supervised["closed"], supervised["file"]))
    print(f"\nwhole run (one batch, one snapshot): file-level {statistics.median(runs['file']):.2f} s, closed "
          f"{statistics.median(runs['closed']):.2f} s (medians of {ROUNDS})")
    print(f"supervisor start to end of `python -c pass`: file-level {statistics.median(supervised['file']) * 1e3:.0f} "
          f"ms, closed {statistics.median(supervised['closed']) * 1e3:.0f} ms")
    report(benchmark, "run_ratio", run_ratio)
    report(benchmark, "supervisor_ratio", sup_ratio)
