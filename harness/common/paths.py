"""Where the project's own files are, computed once for every process that needs to say so.

The method's process, the evaluation worker and the entry check put the folder holding the ``harness``
package on ``PYTHONPATH`` and make it listable in their sandboxes, so that the harness imports there even
when it is not installed; the tracks and the demo read files beside it. Each used to compute it from its
own ``__file__``, eleven times in all."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds ``harness/`` and ``q0_reference/`` (the repository, or site-packages)."""
