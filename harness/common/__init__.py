"""Small mechanisms every process shares, each written once: where the project is (``paths``), the one
atomic write (``atomic``), progress lines (``progress``), where a run came from (``provenance``), thread
settings (``threads``), leaving without interpreter teardown (``fast_exit``), opening GPUs before a sandbox
needs them (``gpu_nodes``), and the launch spec and rank groups of a distributed run (``distributed``).

Who may import it: anyone, the confined processes included. It knows nothing of runs, data or records and
imports only :mod:`harness.errors` (an import-linter layer, checked by tests/test_layers.py)."""
