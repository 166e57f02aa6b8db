"""The meter, the clock and the protocol, attacked by methods that game them (items 2 to 5 of the
accounting review): replayed steps, a second hello, fitness data as free training data, and requests no
honest client sends. Each must end in a record with a clear status and reason, with the harness's
numbers intact."""

from __future__ import annotations

import resource

import pytest

from harness.common.distributed import LaunchSpec
from harness.errors import SlowrunError
from harness.run.runner import RunRequest, run_method
from tests.trust.runs import metrics, run


@pytest.mark.parametrize("target,rule", [("shard", "one-process run has nobody to step with"),
                                         ("batch_size", "fixed by its first request")])
def test_a_paid_step_cannot_be_replayed(target, rule, synthetic_data, tmp_path):
    run_dir, record = run("replay_steps", synthetic_data, tmp_path, target=target)
    assert record["status"] == "invalid"
    assert record["error"]["type"] == "ContractError" and rule in record["error"]["message"]
    seq_len = record["track"]["seq_len"]
    # what it drew before the refusal, once: one batch of 4 (the shard attempt is refused outright)
    assert record["metered"]["train_tokens"] == (0 if target == "shard" else 4 * seq_len)
    assert record["metered"]["epochs"] <= 1.0


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_second_hello_gets_no_fresh_meter(ranks, synthetic_data, tmp_path, monkeypatch):
    """The token never reaches the method (tests/trust/test_sandbox_attacks.py), so a second hello has
    nothing to say it with; a hello with the real token is refused and ends the run
    (tests/server/test_requests.py). Here: the attempts a method can make are refused and logged, and
    the counts are the job's."""
    monkeypatch.setenv("SLOWRUN_NUM_THREADS", "1")
    extra = {"launch": LaunchSpec(nproc_per_node=2), "timeout_s": 120} if ranks == 2 else {}
    run_dir, record = run("second_hello", synthetic_data, tmp_path, **extra)
    assert record["status"] == "ok", record["error"]
    lines = [line for line in metrics(run_dir) if "same_channel" in line]
    assert lines and all(line["same_channel"] == line["new_connection"] == "refused" for line in lines)
    assert [i["kind"] for i in record["incidents"]] == ["hello-refused"] * ranks
    seq_len = record["track"]["seq_len"]
    assert all(record["metered"]["per_stream"][f"first-r{r}"] == 16 * seq_len for r in range(ranks))
    assert record["metered"]["train_tokens"] == sum(record["metered"]["per_stream"].values())


def test_fitness_past_the_cap_is_refused_before_the_run(synthetic_data, tmp_path, make_fitness_method):
    """The attack declared 49% of the split as fitness and trained on it unmetered (3.50 -> 2.47 nats)."""
    method = make_fitness_method(int(0.49 * 65_536))
    with pytest.raises(SlowrunError, match="over the cap of 4,096"):
        run_method(RunRequest(method_dir=method, track="synthetic", epochs=1.0, data_dir=synthetic_data,
                              out=tmp_path / "greedy", progress=False))
    assert not (tmp_path / "greedy").exists()  # no run folder was made


def test_training_on_fitness_windows_before_the_first_batch_is_timed(synthetic_data, tmp_path):
    run_dir, record = run("fitness_untimed", synthetic_data, tmp_path, time_limit_s=600.0, compute_class="cpu")
    assert record["status"] == "ok", record["error"]
    assert record["metered"]["fitness_tokens"] > 0
    assert record["timings"]["train_s"] >= 1.5  # the 1.5 s on fitness windows count as training


@pytest.mark.parametrize("target,rule", [
    ("huge_frame", "3,221,225,472-byte payload"),
    ("huge_header", "message header (the limit is 1,048,576 bytes)"),
    ("long_line", "'log' request (the limit for it is 65,536 bytes)"),
    ("nan_json", "NaN is not a JSON number"),
    ("string_loss", "loss must be a number"),
    ("forged_event", "event 'snapshot' is the harness's own"),
    ("metrics_flood", "metrics would pass 67,108,864 bytes"),
])
def test_requests_past_the_protocols_bounds_end_the_run(target, rule, synthetic_data, tmp_path):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB: the runner is this process
    run_dir, record = run("protocol_abuse", synthetic_data, tmp_path, target=target)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert record["status"] == "invalid"
    assert record["error"]["type"] == "ProtocolViolation" and rule in record["error"]["message"], record["error"]
    lines = metrics(run_dir)
    assert lines[0]["before"] == 1  # written before the attack, kept
    assert not any(line.get("event") == "snapshot" and line.get("tag") == "best" for line in lines)
    assert (run_dir / "metrics.jsonl").stat().st_size <= 64 << 20
    assert grown_mib < 256, f"the runner grew by {grown_mib:.0f} MiB"
    assert record["snapshots"] == []  # it never got to train

