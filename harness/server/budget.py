"""The job-wide budget counter, kept in the data server's process.

Every rank of a job talks to the one data server, so the budget is a plain integer behind a lock: the
same contract as the torchrun store's atomic add it replaces (`add`, `total`, `charge_group_step`), but
out of the method's reach. Ranks of a DDP group step together, so a step of a sharded stream is granted
or refused once for all its shards (the first shard to ask decides, the others get the same answer), and
no rank is left waiting in an all-reduce that its peers will never join.
"""

from __future__ import annotations

import threading


class LocalBudget:
    def __init__(self, initial: int = 0):
        self._lock = threading.Lock()
        self._total = int(initial)
        self._steps: dict[tuple[str, int], bool] = {}

    def add(self, tokens: int) -> int:
        with self._lock:
            self._total += int(tokens)
            return self._total

    def total(self) -> int:
        with self._lock:
            return self._total

    def charge_group_step(self, stream_key: str, step: int, targets: int, allowed: int) -> bool:
        with self._lock:
            decided = self._steps.get((stream_key, step))
            if decided is None:
                decided = self._total + targets <= allowed
                if decided:
                    self._total += targets
                self._steps[(stream_key, step)] = decided
                # every shard has left step - 2 behind once one asks for `step` (they step together)
                self._steps.pop((stream_key, step - 2), None)
            return decided
