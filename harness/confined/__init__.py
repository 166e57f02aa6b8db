"""Everything that runs beside untrusted code: the method's own process (``worker``, with the entry import of
``entry_import``), the evaluation worker that runs a snapshot's model code (``eval_worker``, and the
``eval_zygote`` it is forked from, with ``allocator`` and ``weights_view``).

These modules run inside the sandbox, next to code the harness does not trust, so they hold nothing the run's
numbers depend on: they import no module of the harness's side (the runner, the data server's ledger and clock,
the meter, the data store, evaluation, records, the CLI), only what both sides share (``harness.errors``,
``harness.contract``, ``harness.tracks``, ``harness.snapshots``, the framings ``harness.server.wire`` and
``harness.channel``, ``harness.sandbox``). The rule is an import-linter contract in pyproject.toml, checked by
tests/test_layers.py. Harness-side code starts these modules as processes (``python -m harness.confined.worker``)
and never imports them."""
