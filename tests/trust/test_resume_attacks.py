"""`--resume auto` (harness.run.runner.run_state) against a method that wants its finished run continued.

run_state resumes a run whose record's error type is `Interrupted`, which only the harness may write. A rank
that fails reports the name of the exception that ended `main`: one named like the harness's own findings is
recorded under the method's name (`method.Interrupted`), so it cannot pass for an interruption."""

from __future__ import annotations

import json

from harness.run.runner import RunRequest, run_method, run_state
from tests.trust.runs import write_method

SAYS_INTERRUPTED = '''
class Interrupted(Exception):
    """Named like the harness's own error for a run stopped by a signal."""


def main(ctx):
    stream = ctx.train_stream("main", batch_size=4)
    for _ in range(3):
        next(stream)
    ctx.checkpoint({"step": 3})
    for _ in range(20):
        next(stream)  # trained on, then rolled back when --resume auto continues from the checkpoint
    raise Interrupted("pre-empted: the scheduler warned that it would stop the job")
'''


def test_a_method_cannot_make_its_finished_run_look_interrupted(synthetic_data, tmp_path):
    method = write_method(tmp_path / "says_interrupted", SAYS_INTERRUPTED)
    run_dir = run_method(RunRequest(method_dir=method, epochs=50.0, seed=1, data_dir=synthetic_data,
                                    progress=False, out=tmp_path / "run"))
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "failed"  # the method's process ended on its own, nobody signalled anything
    assert record["error"]["type"] == "method.Interrupted"  # the method's exception, by the method's name
    assert run_state(run_dir) == "final"  # --resume auto leaves it as it is
