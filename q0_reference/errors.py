"""Errors raised by the q0 reference library.

They derive from the harness's user-facing error base so the CLI prints them as plain messages, and from
the matching built-in exception so code that only knows Python's types can still catch them.
"""

from __future__ import annotations

from harness.errors import SlowrunError


class Q0ConfigError(SlowrunError, ValueError):
    """A model, optimizer, schedule or plan setting cannot be used; the message says which and why."""


class NonFiniteLossError(SlowrunError, FloatingPointError):
    """A training loss came out NaN or infinite; the step was not applied, so the weights are intact."""
