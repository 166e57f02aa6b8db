"""How a run's training ended: each rank's status and the rules that make one status of them.

The record's status and error come from the data server's own state, never from what the method says: a
rank's end, how the supervisor saw its process tree end, the clock against the cap, a protocol violation.
The worst status wins (``SEVERITY``), and a job whose rank ends ``STOPS_THE_JOB`` stops its peers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

SEVERITY = ("ok", "budget-exceeded", "over-time", "invalid", "diverged", "failed", "timeout")


STOPS_THE_JOB = frozenset({"invalid", "diverged", "failed"})  # a rank ending so leaves its peers waiting


@dataclass
class RankState:
    connected: bool = False
    ended: bool = False
    status: str | None = None
    error: dict | None = None
    sandbox: dict | None = None
    metrics_lines: int = 0
    metrics_bytes: int = 0


@dataclass
class TrainOutcome:
    """How training ended, from the server's own counts; the runner turns it into the record."""

    status: str
    error: dict | None
    meter: dict
    epochs: float
    epoch_tokens: int
    train_tokens: int
    ensemble: Any
    snapshots: list
    train_s: float
    resumed: bool
    warmup_s: float = 0.0
    time_limit_s: float | None = None
    over_cap_s: float | None = None
    world_size: int = 1
    sandbox: dict | None = None
    supervisor: dict | None = None
    incidents: list | None = None  # what the server refused or stopped, in order (refused hellos, ...)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# The error types the harness gives its own findings. `run_state` resumes a run whose record says
# `Interrupted`, so a method must not be able to claim one of these names for the error it ends with.
HARNESS_ERROR_TYPES = frozenset({"Interrupted", "WorkerDied", "Timeout", "OverTime", "ProtocolViolation",
                                 "HarnessError", "Diverged"})
METHOD_ERROR_PREFIX = "method."  # how a method's exception named like one of them is recorded


def run_error(kind: str, message: str, tb: str = "") -> dict:
    return {"type": kind, "message": message, "traceback": tb}


def interrupted_error(how: str = "") -> dict:
    return run_error("Interrupted", f"the run was interrupted (SIGTERM or SIGINT to slowrun run{'; ' + how if how else ''}); "
                     "resume it with slowrun run --resume")


def preempted_error(request: dict) -> dict:
    """The error of a run stopped after the scheduler's warning (harness/run/preemption.py), saying where
    it resumes: from the checkpoints every rank took on the warning, or from earlier ones."""
    done, world = request.get("ranks_checkpointed", []), request.get("world_size", 1)
    where = (f"every rank checkpointed at {request.get('train_s', 0.0):.1f} s of training, and the run resumes there"
             if request.get("settled") else
             f"{len(done)} of {world} rank(s) checkpointed within the {request.get('waited_s', 0.0):.0f} s it could "
             "wait; the run resumes from the last checkpoints its ranks agree on")
    return run_error("Interrupted", f"pre-empted: the scheduler warned that it would stop the job; {where}")


def method_error(error) -> dict | None:
    """The error a method's process reports at its end, as plain bounded strings (it is the method's
    account, shown in the record, never trusted for anything else)."""
    if not isinstance(error, dict):
        return None
    kind = str(error.get("type", ""))[:200]
    if kind in HARNESS_ERROR_TYPES:
        # An exception the method named like the harness's own finding (its own `class Interrupted`): it is
        # the method's, and a record must not read as if the harness had found it (a run that says
        # `Interrupted` is resumed by `--resume auto`).
        kind = METHOD_ERROR_PREFIX + kind
    return {"type": kind, "message": str(error.get("message", ""))[:4000],
            "traceback": str(error.get("traceback", ""))[-32000:]}


def job_sandbox(reports: list[dict], world_size: int) -> dict:
    """The job's sandbox is the weakest any rank had: one unsandboxed rank makes the run `none`."""
    if len(reports) < world_size or not reports:
        missing = world_size - len(reports)
        if not reports:
            return {"kind": "none", "reason": "no rank reported a sandbox"}
        return {"kind": "none", "reason": f"{missing} rank(s) never reported a sandbox"}
    weakest = next((r for r in reports if r.get("kind") != "landlock"), None)
    return dict(weakest) if weakest else dict(reports[0])


@dataclass(frozen=True)
class EndFacts:
    """What the data server knows when training ends: everything the status rules read."""

    world_size: int
    ranks: Mapping[int, RankState]
    stop: dict | None  # {rank, status, error} of the rank whose end stopped the job, if one did
    diverged: dict | None  # a non-finite loss the method reported
    violation: dict | None  # a protocol violation
    over_cap_s: float | None  # how far past the cap a refused snapshot came
    train_s: float
    time_limit_s: float | None
    snapshot_grace_s: float


def job_status(facts: EndFacts, supervised: dict | None, stopped_at_cap: bool, interrupted: bool
               ) -> tuple[str, dict | None]:
    """The run's (status, error): each rank's end, then the job-wide events, the worst by ``SEVERITY``.

    `supervised` is how the method's process tree ended (the supervisor's status): a timeout or an
    interruption is the run's status for every rank that had not ended by then. `stopped_at_cap`: the
    runner stopped the processes because they trained past the compute class's cap. `interrupted`: the
    runner got SIGTERM or SIGINT; a rank whose connection dropped first died of the same signal (a
    scheduler signals every process of its job), so the run was interrupted, not crashed."""
    reason = (supervised or {}).get("reason")
    ranks = []
    for rank in range(facts.world_size):
        state = facts.ranks.get(rank, RankState())
        if state.ended:
            status, error = state.status, state.error
        elif facts.stop is not None and rank != facts.stop["rank"]:
            continue  # stopped because another rank failed: that rank's status is the run's
        elif facts.stop is not None and (reason == "terminated" or interrupted):
            status, error = facts.stop["status"], facts.stop["error"]  # its connection dropped first
            if interrupted and (error or {}).get("type") == "WorkerDied":
                status, error = "failed", interrupted_error("the signal reached the method's processes first")
        elif stopped_at_cap:
            status, error = "over-time", run_error("OverTime", f"still training {facts.train_s:.1f} s "
                                                   f"into the {facts.time_limit_s:g} s cap (grace "
                                                   f"{facts.snapshot_grace_s:g} s); stopped by the harness")
        elif reason == "timeout":
            status, error = "timeout", run_error("Timeout", f"stopped by --timeout after "
                                                 f"{supervised.get('elapsed_s', 0):.1f} s of wall time")
        elif reason == "terminated" or interrupted:
            # `exited` with the runner interrupted: the scheduler's signal ended the method's processes, and
            # the supervisor reaped them before it handled its own copy of the signal
            status, error = "failed", interrupted_error()
        elif not state.connected and rank not in facts.ranks:
            status, error = "failed", run_error("WorkerDied", "the method's process never reached the data "
                                                f"server (exit code {(supervised or {}).get('exit_code')})")
        else:
            how = (f"was killed by signal {supervised['signal']}" if (supervised or {}).get("signal")
                   else f"exited with code {(supervised or {}).get('exit_code')}")
            status, error = "failed", run_error(
                "WorkerDied", f"the method's process {how} before reporting (killed, out of memory, or a "
                "crash in native code); resume with slowrun run --resume")
        ranks.append((rank, status, error))
    if facts.diverged is not None:
        ranks.append((-1, "diverged", facts.diverged))
    if facts.over_cap_s is not None and not stopped_at_cap:
        ranks.append((-1, "over-time", run_error("OverTime", f"a snapshot came {facts.over_cap_s:.1f} s "
                                                 f"after the {facts.time_limit_s:g} s cap, past the grace "
                                                 "for the final snapshot; snapshots from before the cap count")))
    if facts.violation is not None:
        ranks.append((-1, "invalid", facts.violation))
    worst = max(ranks, key=lambda r: (SEVERITY.index(r[1]), -r[0]))
    status, error = worst[1], worst[2]
    if error is not None and facts.world_size > 1 and worst[0] >= 0:
        error = {**error, "message": f"rank {worst[0]}: {error['message']}"}
    return status, error
