"""ARC-Easy, PIQA and SciQ through lm-eval, for one snapshot or a weighted ensemble of snapshots.

The model side (:mod:`harness.eval.downstream.lm`) imports lm-eval, which takes seconds, so it is imported
only when scoring starts.

Who may import it: the runner and the record (the final predictor's scores) and the CLI (its options).
Snapshots are scored through the evaluation worker's client (:mod:`harness.eval.remote_model`), never by
importing the method's code here.
"""

from harness.eval.downstream.score import (
    DownstreamNotApplicable,
    downstream_average,
    run_tasks,
    score_downstream,
    score_snapshots,
    track_tokenizer,
)
from harness.eval.downstream.tasks import DEFAULT_TASKS, known_tasks, load_tasks

__all__ = [
    "DEFAULT_TASKS",
    "DownstreamNotApplicable",
    "downstream_average",
    "known_tasks",
    "load_tasks",
    "run_tasks",
    "score_downstream",
    "score_snapshots",
    "track_tokenizer",
]
