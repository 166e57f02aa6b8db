"""The checkpoint on the scheduler's warning, attacked by the method.

A rank's checkpoint after the request is answered `hold`, and the client waits to be stopped. The client is
the method's own code, though: this one leaves the wait and keeps asking for batches, keeping what it reads
in scratch. The server holds the rank itself (it answers nothing more), and a resume empties scratch."""

from __future__ import annotations

import pytest

from harness.run.preemption import WARNING
from harness.run.runner import RunInterrupted, RunRequest, run_method
from tests.runner.test_warning import _warn_when
from tests.trust.runs import write_method

LEAVES_THE_HOLD = '''
import harness.confined.context as client
import time as _time


class _Leave(Exception):
    pass


class _NoWait:
    """The client's hold is `while True: time.sleep(3600)` in its own module: give it a time that returns."""

    def __getattr__(self, name):
        return getattr(_time, name)

    def sleep(self, seconds):
        raise _Leave()


def main(ctx):
    stream = ctx.train_stream("main", batch_size=4)
    while True:
        next(stream)
        ctx.log(loss=1.0)
        _time.sleep(0.005)
        if ctx.checkpoint_requested:
            break
    client.time = _NoWait()
    try:
        ctx.checkpoint({"step": "the warning's"})  # answered hold: where the run resumes
    except _Leave:
        pass
    extra = ctx.train_stream("after_hold", batch_size=4)  # rolled back on resume: never in the record
    while True:
        next(extra)
        with open("batches_after_hold.txt", "a") as f:  # cwd is sandbox/scratch, which a resume keeps
            f.write("x")  # one byte a batch (a count rewritten in place could be cut by the stop)
'''


def test_a_rank_that_leaves_the_hold_gets_no_more_batches(synthetic_data, tmp_path):
    run_dir = tmp_path / "run"
    watcher = _warn_when(run_dir, lambda lines: len(lines) >= 5, wait_s=60)
    with pytest.raises(RunInterrupted):
        run_method(RunRequest(method_dir=write_method(tmp_path / "leaves_the_hold", LEAVES_THE_HOLD), epochs=50.0,
                              seed=1, data_dir=synthetic_data, progress=False, out=run_dir))
    watcher.join(timeout=5)
    assert WARNING.result is not None and WARNING.result["settled"]  # it did checkpoint on the warning
    stash = run_dir / "sandbox" / "scratch" / "batches_after_hold.txt"
    after_hold = stash.stat().st_size if stash.exists() else 0
    assert after_hold == 0, f"{after_hold} batches served after the hold"
