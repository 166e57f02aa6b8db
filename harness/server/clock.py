"""The training clock: what a compute class's cap is measured against, kept in the data server.

Training time runs from the first real batch the server hands out to the end of training (every rank has
ended, or the runner stopped the method's processes), plus the training time of earlier sessions of a
resumed run. Before the first batch the method has seen no data, so whatever it does there (building the
model, compiling it on `ctx.warmup_batches`) is not training and is not timed; that stretch is recorded
as warm-up.

At the cap the data path closes: a batch request is refused with TimeExhausted. The clock answers "is it
still open?"; the job's ledger (`harness.server.ledger`) asks it once per group step and gives every shard
of the step that one answer, so no rank waits in an all-reduce its peers will never join.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class TrainClock:
    def __init__(self, limit_s: float | None = None, grace_s: float = 0.0, previous_s: float = 0.0,
                 now: Callable[[], float] = time.monotonic):
        self.limit_s = limit_s
        self.grace_s = grace_s
        self.previous_s = float(previous_s)
        self._now = now
        self._lock = threading.Lock()
        self._connected: float | None = None
        self._first: float | None = None
        self._end: float | None = None
        self.over_cap_s: float | None = None  # how far past the cap training went, when it did

    # ---- events -------------------------------------------------------------------------------------
    def connected(self) -> None:
        """A rank reached the server: warm-up runs from the first connection to the first batch."""
        with self._lock:
            if self._connected is None:
                self._connected = self._now()

    def admit(self) -> bool:
        """Whether a batch may still be served; the first admitted batch starts the clock."""
        with self._lock:
            open_ = self.limit_s is None or self._seconds() < self.limit_s
            if open_ and self._first is None:
                self._first = self._now()
            return open_

    def start(self) -> None:
        """Data other than a batch reached the method (fitness windows): training time starts now if it
        has not yet."""
        with self._lock:
            if self._first is None and self._end is None:
                self._first = self._now()

    def stop(self) -> None:
        """Training ended (every rank said so, or its processes are gone); later calls change nothing."""
        with self._lock:
            if self._end is None:
                self._end = self._now()

    def note_over_cap(self) -> None:
        """The method did something that counts as training after the cap and its grace (a late snapshot,
        or still running when the runner stopped it)."""
        with self._lock:
            if self.limit_s is not None and self.over_cap_s is None:
                self.over_cap_s = max(0.0, self._seconds() - self.limit_s)

    # ---- readings -----------------------------------------------------------------------------------
    def _seconds(self) -> float:
        if self._first is None:
            return self.previous_s
        end = self._end if self._end is not None else self._now()
        return self.previous_s + (end - self._first)

    def seconds(self) -> float:
        """Training seconds so far (all sessions)."""
        with self._lock:
            return self._seconds()

    def session_seconds(self) -> float:
        """Training seconds of this session alone."""
        with self._lock:
            return self._seconds() - self.previous_s

    def warmup_seconds(self) -> float:
        """From the first rank's connection to the first batch (or to the end, if none was served)."""
        with self._lock:
            if self._connected is None:
                return 0.0
            stop = self._first if self._first is not None else (self._end if self._end is not None else self._now())
            return max(0.0, stop - self._connected)

    def past_grace(self) -> bool:
        """Training has gone past the cap by more than the grace for writing a final snapshot."""
        with self._lock:
            return self.limit_s is not None and self._seconds() > self.limit_s + self.grace_s

    @property
    def started(self) -> bool:
        return self._first is not None
