"""Errors the harness raises for bad input.

Every message says what is wrong and what to fix, naming the file (and line) where there is one, so the
CLI can print it as is and exit non-zero instead of showing a traceback.
"""

from __future__ import annotations


class SlowrunError(Exception):
    """Base of every user-facing error: the message is the whole explanation."""


class DataError(SlowrunError):
    """A data source, tokenizer or prepared split is missing, malformed or inconsistent."""


class TrackError(SlowrunError):
    """A track name or track definition cannot be used."""


class RecordError(SlowrunError):
    """A result record cannot be read, parsed or trusted: the message names the file and every problem."""


class LeaderboardError(SlowrunError):
    """The leaderboard cannot build, accept a record or publish as asked."""
