"""The scheduler's warning: ask the method for a checkpoint, wait for it within the grace, then stop.

A scheduler warns a job before it stops it (Slurm: the ``--signal`` signal ``--grace`` seconds before the
time limit, or at a pre-emption with ``SlurmctldParameters=preempt_send_user_signal``). Stopping the
method's processes at once, as on SIGTERM, throws away everything since its last checkpoint, which for q0 can be a
whole cycle. Instead the runner asks the ranks for a checkpoint (it reaches them on their next batch, see
:attr:`harness.contract.RunContext.checkpoint_requested`), waits until every rank has checkpointed or has
nothing to lose (ended, or waiting on the server for its peers), and only then stops them; a method that
does not answer is stopped when the wait runs out, as before.

`slowrun run` takes SIGUSR1 as the warning (any scheduler can send it: Slurm's ``--signal=B:USR1@120`` to a
job script that ``exec``s slowrun, a pre-stop hook); the Slurm job of ``--slurm`` also requeues itself after it.

The warning comes in as a signal, in the main thread, while the runner waits for the method's processes:
:class:`SchedulerWarning` is the one object the handler and the waiting loop share. It only does something while it
is armed, that is while the method trains; a warning during evaluation has no checkpoint to ask for, and
the job treats it as a stop (``warn`` returns False).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager


DEFAULT_GRACE_S = 120  # Slurm's --signal lead this harness asks for by default (harness.cluster.slurm)


class SchedulerWarning:
    """One job's warning: armed while the method trains, asked at most once, read by the waiting runner."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._armed = False
        self._deadline: float | None = None
        self._warned_at: float | None = None
        self.result: dict | None = None  # what the last warned session did (the job's start record)
        self.grace_s = float(DEFAULT_GRACE_S)  # the scheduler's grace (a Slurm job sets its --grace)
        self.signalled = False  # a warning came, whether or not the method was training then

    def warn(self, wait_s: float | None = None) -> bool:
        """The scheduler's warning, with `wait_s` seconds to get the checkpoints (default: what the grace
        leaves); False when the method is not training (nothing to ask for: stop it as on SIGTERM)."""
        if wait_s is None:
            wait_s = checkpoint_wait_s(self.grace_s)
        with self._lock:
            self.signalled = True
            if not self._armed:
                return False
            if self._deadline is None:
                self._warned_at = self._clock()
                self._deadline = self._warned_at + max(0.0, float(wait_s))
            return True

    @property
    def asked(self) -> bool:
        with self._lock:
            return self._deadline is not None

    def past_deadline(self) -> bool:
        with self._lock:
            return self._deadline is not None and self._clock() >= self._deadline

    def waited_s(self) -> float:
        """Seconds since the warning came (the wait's own origin; the runner notices it up to a poll later)."""
        with self._lock:
            return 0.0 if self._warned_at is None else self._clock() - self._warned_at

    @contextmanager
    def armed(self):
        """The method trains: a warning now asks for a checkpoint."""
        with self._lock:
            self._armed, self._deadline, self._warned_at, self.result = True, None, None, None
        try:
            yield self
        finally:
            with self._lock:
                self._armed = False


WARNING = SchedulerWarning()  # the process's one warning (a signal handler has no other way to reach the runner)


def checkpoint_wait_s(grace_s: float) -> float:
    """How long to wait for checkpoints within a grace of `grace_s` seconds: what is left after stopping the
    processes, writing the record and requeueing (about half a minute on a loaded node), but never less than
    half the grace (a short grace still gets a chance to checkpoint)."""
    return max(grace_s / 2.0, grace_s - 30.0)
