"""The accounting under real concurrency: sandboxed ranks on gloo, one DDP group, skew before every step.

Each case is a real `slowrun run` through torchrun: 2 or 4 ranks, 1, 3 or 8 microbatches per optimizer step
(every one a separate batch request, fetched one after the other as q0 fetches a step's microbatches),
and before each step a random rank late by 0, 0.2, 1 or 5 ms. The checks, against numbers computed here:

- the tokens the ranks received (counted by the method) equal what the record says was served, per shard
  and in total, and equal the budget rounded down to the last whole group step;
- every rank was refused at the same microbatch (at the budget, and at the time cap in the timed cases),
  so nobody was left in an all-reduce;
- no case hangs: each run has a `--timeout` of 300 s, and a hang would end it as `timeout`.

The default run takes six cases of the matrix (every rank count with every accumulation, every skew); the
whole 2 x 3 x 4 matrix (about 4-5 s a case on two cores) is marked slow:
`python -m pytest tests/accounting -m slow`.
"""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path

import pytest

from harness.common.distributed import LaunchSpec
from harness.run.runner import RunRequest, run_method

METHOD = Path(__file__).parent / "methods" / "lockstep"
MICRO = 2
BUDGET_EPOCHS = 0.99  # not a whole number of steps: the last partial step must be refused
HANG_LIMIT_S = 300.0

FULL = list(itertools.product((2, 4), (1, 3, 8), (0.0, 0.2, 1.0, 5.0)))
QUICK = [(2, 1, 0.0), (2, 3, 1.0), (2, 8, 5.0), (4, 1, 0.2), (4, 3, 5.0), (4, 8, 1.0)]  # every value twice or more


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(data: Path, out: Path, ranks: int, accumulation: int, skew_ms: float, epochs: float = BUDGET_EPOCHS,
             time_limit_s: float | None = None) -> tuple[dict, list[dict]]:
    run_dir = run_method(RunRequest(
        method_dir=METHOD, track="synthetic", epochs=epochs, data_dir=data, out=out, progress=False,
        overrides=(("accumulation", str(accumulation)), ("skew_ms", str(skew_ms)), ("micro_batch", str(MICRO))),
        launch=LaunchSpec(nproc_per_node=ranks, master_port=free_port()), timeout_s=HANG_LIMIT_S,
        time_limit_s=time_limit_s, compute_class="cpu"))
    record = json.loads((run_dir / "record.json").read_text())
    reports = []
    for rank in range(ranks):
        metrics = run_dir / ("metrics.jsonl" if rank == 0 else f"metrics-rank{rank}.jsonl")
        reports.append(next(json.loads(line) for line in metrics.read_text().splitlines() if "received" in line))
    return record, reports


def check_exact(record: dict, reports: list[dict], ranks: int, refusal: str) -> None:
    assert record["status"] == "ok", record["error"]
    assert record["error"] is None
    # one answer for every shard: all refused at the same microbatch, by the same rule
    assert len({r["microbatches"] for r in reports}) == 1, reports
    assert {r["refusal"] for r in reports} == {refusal}
    # what the ranks received is what the record says was served, shard by shard
    per_stream = record["metered"]["per_stream"]
    assert per_stream == {f"main[{i}/{ranks}]": reports[i]["received"] for i in range(ranks)}
    assert record["metered"]["train_tokens"] == sum(r["received"] for r in reports)
    # the shards of a group read disjoint windows (the stream's one order, dealt round-robin)
    assert len({r["digest"] for r in reports}) == ranks


@pytest.mark.parametrize("ranks,accumulation,skew_ms", QUICK)
def test_metered_is_served_to_the_last_whole_step(synthetic_data, tmp_path, monkeypatch, ranks, accumulation,
                                                  skew_ms):
    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    _budget_case(synthetic_data, tmp_path, ranks, accumulation, skew_ms)


@pytest.mark.slow
@pytest.mark.parametrize("ranks,accumulation,skew_ms", FULL)
def test_the_whole_matrix(synthetic_data, tmp_path, monkeypatch, ranks, accumulation, skew_ms):
    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    _budget_case(synthetic_data, tmp_path, ranks, accumulation, skew_ms)


def _budget_case(data: Path, tmp_path: Path, ranks: int, accumulation: int, skew_ms: float) -> None:
    record, reports = run_case(data, tmp_path / "run", ranks, accumulation, skew_ms)
    check_exact(record, reports, ranks, "BudgetExhausted")
    epoch_tokens = record["metered"]["epoch_tokens"]
    seq_len = record["track"]["seq_len"]
    allowed = int(BUDGET_EPOCHS * epoch_tokens + 1e-6)
    group_step = ranks * MICRO * seq_len  # one microbatch request of every shard
    assert record["metered"]["train_tokens"] == (allowed // group_step) * group_step  # to the last whole step
    assert reports[0]["microbatches"] == allowed // group_step


@pytest.mark.parametrize("ranks,accumulation,skew_ms", [(2, 3, 1.0), (4, 8, 5.0)])
def test_at_the_time_cap_every_shard_gets_the_same_answer(synthetic_data, tmp_path, monkeypatch, ranks,
                                                          accumulation, skew_ms):
    """A cap of 1.5 s and a budget far away: the clock, not the budget, ends the run, at one step for all."""
    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    record, reports = run_case(synthetic_data, tmp_path / "run", ranks, accumulation, skew_ms, epochs=1000.0,
                               time_limit_s=1.5)
    check_exact(record, reports, ranks, "TimeExhausted")
    assert record["metered"]["epochs"] < 1000.0
    assert reports[0]["microbatches"] > 0
