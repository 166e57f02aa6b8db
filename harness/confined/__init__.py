"""Everything that runs beside untrusted code, one module per confined process or its parts:

- the method's own process: ``method_process`` (connect to the data server, enter the sandbox, import the
  method through ``entry_import``, run it), ``context`` (the :class:`RunContext` it is handed, a client of
  the data server) and ``graph_export`` (a snapshot's forward exported as a graph);
- the entry check's child: ``entry_import`` (``python -m harness.confined.entry_import``);
- the evaluation of a snapshot that has no exported graph: ``eval_zygote`` (the fork server process that
  imports torch once), ``eval_worker`` (a sandboxed process per snapshot that runs its model code),
  ``allocator`` and ``weights_view``.

These modules run inside the sandbox, next to code the harness does not trust, so they hold nothing the run's
numbers depend on. They import only what both sides share (:mod:`harness.errors`, :mod:`harness.common`,
:mod:`harness.rules`, :mod:`harness.formats`, :mod:`harness.wire`, :mod:`harness.sandbox`), never the data,
the server, evaluation, the runner or the CLI; and nothing of the harness's side imports them (only
:mod:`harness.contract` names the context for methods). Harness-side code starts them as processes
(``python -m harness.confined.method_process``). Both rules are import-linter contracts in pyproject.toml,
checked by tests/test_layers.py."""
