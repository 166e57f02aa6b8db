"""The status rules of a run's end (harness.server.outcome.job_status) as a pure function: each case worked by
hand from the rules' order (SEVERITY) and what each end means."""

from __future__ import annotations

from harness.server.outcome import SEVERITY, EndFacts, RankState, job_status


def facts(world_size=1, ranks=None, **kw) -> EndFacts:
    base = dict(stop=None, diverged=None, violation=None, over_cap_s=None, train_s=10.0, time_limit_s=None,
                snapshot_grace_s=0.0)
    return EndFacts(world_size=world_size, ranks=ranks or {}, **{**base, **kw})


def ended(status="ok", error=None) -> RankState:
    return RankState(connected=True, ended=True, status=status, error=error)


def test_a_clean_end_is_ok_and_a_violation_outranks_it():
    assert job_status(facts(ranks={0: ended()}), {"reason": "exited", "exit_code": 0}, False, False) == ("ok", None)
    violation = {"type": "ProtocolViolation", "message": "bad", "traceback": ""}
    assert job_status(facts(ranks={0: ended()}, violation=violation), None, False, False) == ("invalid", violation)


def test_the_worst_status_wins_and_names_its_rank():
    ranks = {0: ended("budget-exceeded"), 1: ended("failed", {"type": "X", "message": "boom", "traceback": ""})}
    status, error = job_status(facts(world_size=2, ranks=ranks), None, False, False)
    assert status == "failed" and error["message"] == "rank 1: boom"
    assert SEVERITY.index("failed") > SEVERITY.index("budget-exceeded")


def test_a_timeout_and_an_interruption_are_the_status_of_ranks_still_running():
    running = {0: RankState(connected=True)}
    status, error = job_status(facts(ranks=running), {"reason": "timeout", "elapsed_s": 12.5}, False, False)
    assert status == "timeout" and "12.5 s" in error["message"]
    status, error = job_status(facts(ranks=running), {"reason": "terminated"}, False, True)
    assert status == "failed" and error["type"] == "Interrupted"


def test_a_rank_that_died_of_the_schedulers_signal_was_interrupted_not_crashed():
    died = {"type": "WorkerDied", "message": "connection dropped", "traceback": ""}
    stop = {"rank": 1, "status": "failed", "error": died}
    ranks = {0: RankState(connected=True), 1: RankState(connected=True)}
    status, error = job_status(facts(world_size=2, ranks=ranks, stop=stop), {"reason": "terminated"}, False, True)
    assert status == "failed" and error["type"] == "Interrupted" and error["message"].startswith("rank 1: ")
    status, error = job_status(facts(world_size=2, ranks=ranks, stop=stop), {"reason": "terminated"}, False, False)
    assert error["type"] == "WorkerDied"  # without the runner's interruption it is a crash


def test_an_interrupted_run_whose_processes_died_before_the_supervisor_stopped_them_was_interrupted():
    """A scheduler signals every process of the job: the method's tree can die of it and be reaped before the
    supervisor handles its own signal, which then reports `exited` (by signal 15), not `terminated`."""
    exited = {"reason": "exited", "exit_code": None, "signal": 15}
    status, error = job_status(facts(ranks={0: RankState(connected=True)}), exited, False, True)
    assert status == "failed" and error["type"] == "Interrupted"
    died = {"type": "WorkerDied", "message": "connection dropped", "traceback": ""}
    stop = {"rank": 1, "status": "failed", "error": died}
    ranks = {0: RankState(connected=True), 1: RankState(connected=True)}
    status, error = job_status(facts(world_size=2, ranks=ranks, stop=stop), exited, False, True)
    assert error["type"] == "Interrupted" and error["message"].startswith("rank 1: ")
    # the same end without the runner's interruption is a crash
    status, error = job_status(facts(ranks={0: RankState(connected=True)}), exited, False, False)
    assert error["type"] == "WorkerDied" and "signal 15" in error["message"]


def test_training_past_the_cap_is_over_time():
    running = {0: RankState(connected=True)}
    status, error = job_status(facts(ranks=running, train_s=905.0, time_limit_s=900.0, snapshot_grace_s=2.0),
                               {"reason": "terminated"}, True, False)
    assert status == "over-time" and "905.0 s into the 900 s cap" in error["message"]


def test_a_process_that_never_connected_died():
    status, error = job_status(facts(ranks={}), {"reason": "exited", "exit_code": 3}, False, False)
    assert status == "failed" and error["type"] == "WorkerDied" and "exit code 3" in error["message"]
