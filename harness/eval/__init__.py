"""Evaluation, the harness's side: from a run's snapshots to every number of its record. Scoring runs in
harness processes: an exported graph is built and bound to each snapshot's weights here
(``graph_check``, ``graph_load``); a snapshot without one is scored by its own code in a confined worker that
this package starts and talks to (``remote_model``, ``fork_server``, ``spawn``), checked by ``probes``.
Then per-token log-probabilities (``logprobs``), mixtures (``ensemble``), the learned prior and the
loss-against-epochs curve (``prior``), data-efficiency multipliers (``efficiency``), Slowrun's timed
subset (``timed_subset``), downstream tasks (``downstream``), all put together by ``evaluation``.

Who may import it: :mod:`harness.run`, :mod:`harness.server` (the graph check at snapshot intake), the CLI
and the leaderboard. It never imports confined code: it starts it as a process and reads its bytes."""
