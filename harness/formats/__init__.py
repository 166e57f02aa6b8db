"""What the harness writes and reads back from disk, one module per format: a method's ``method.toml``
(``method_toml``), a snapshot folder (``snapshots``: safetensors weights, build spec, epoch stamp, the
exported forward) and the result record (``records``: schema, validation, canonical bytes). The run folder's
``run.json`` is typed in :mod:`harness.formats.run_spec`.

Who may import it: anyone, the confined processes included (the context writes snapshots in this format).
Each module reads what older versions wrote; a format change is versioned. It imports only
:mod:`harness.rules`, :mod:`harness.common` and :mod:`harness.errors`."""
