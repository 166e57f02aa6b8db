"""The resume copy. On `--resume` the harness used to copy the last checkpoint to
`scratch/.resume/state-rank<r>.pt` with a call that follows a link at the destination: a method that
checkpointed a line of Python, linked that path to a `.pth` file in site-packages and killed itself had
the harness write its line there, to be run by every later Python start, unsandboxed.

Here the link points at `target` (a file the test owns), and a second link replaces the `.resume` folder.
It also replaces the cache and temporary folders the harness makes in scratch for each session (`cache`,
`tmp`) with links to the target's folder: a harness that made `cache/torchinductor` and the rest through
them would make folders, as root, wherever the method pointed. On the resumed session the method checks
that its state came back and trains honestly.

It also reads a batch after its checkpoint and keeps it in scratch, beside a folder holding a link to the
target's folder: the resume rolls the meter back to the checkpoint, so a batch kept across it would be
trained on uncounted. The resumed session lists what it finds in scratch."""

import os
import shutil
import signal

from tests.trust.methods.common import train_and_snapshot


def main(ctx):
    state = ctx.resume_state()
    if state is not None:
        ctx.log(resumed_payload=state["payload"], scratch_found=sorted(p.name for p in ctx.scratch_dir.iterdir()))
        train_and_snapshot(ctx)
        return
    ctx.checkpoint({"payload": "import os; os.system('echo owned')"})
    inputs, _ = next(ctx.train_stream("main", batch_size=2))  # metered, and rolled back by the resume
    (ctx.scratch_dir / "read_after_checkpoint.txt").write_text(" ".join(map(str, inputs[0].tolist())))
    kept = ctx.scratch_dir / "kept" / "deeper"
    kept.mkdir(parents=True)
    os.symlink(os.path.dirname(ctx.hparams["target"]), kept / "link")
    resume = ctx.scratch_dir / ".resume"
    resume.mkdir(exist_ok=True)
    os.symlink(ctx.hparams["target"], resume / f"state-rank{ctx.rank}.pt")
    os.symlink(os.path.dirname(ctx.hparams["target"]), ctx.scratch_dir / ".resume-dir")
    for name in ("cache", "tmp"):
        shutil.rmtree(ctx.scratch_dir / name, ignore_errors=True)
        os.symlink(os.path.dirname(ctx.hparams["target"]), ctx.scratch_dir / name)
    os.kill(os.getpid(), signal.SIGKILL)
