"""Leave a process without the interpreter's teardown once its work is written.

A Python process that has imported torch spends about half a second at exit freeing modules it will
never use again. The harness's command and the method's process each end that way on every run, so
their entry points flush what they print and exit at once; everything they write is already on disk
(atomic writes, closed files) by then. Library calls (`harness.cli.main`) still return normally.
"""

from __future__ import annotations

import os
import sys


def exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(int(code))
