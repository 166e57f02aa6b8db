"""Errors the harness raises for bad input, and the two a method meets when its data runs out.

Every message says what is wrong and what to fix, naming the file (and line) where there is one, so the
CLI can print it as is and exit non-zero instead of showing a traceback. The module imports nothing, so
both sides of the trust boundary share it: the method's process raises ``BudgetExhausted`` and
``TimeExhausted`` without importing the meter that decides them.
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


class BudgetExhausted(SlowrunError):
    """The method asked for training data past its epoch budget."""


class TimeExhausted(BudgetExhausted):
    """The method asked for training data after its compute class's training-time cap.

    A kind of BudgetExhausted: a method that stops on its epoch budget (and then saves its final snapshot)
    stops on the clock the same way."""


class Diverged(SlowrunError):
    """The training loss became NaN or infinite."""


class ContractError(SlowrunError):
    """The method used the context in a way the contract does not allow."""


class RequestError(SlowrunError):
    """A request the contract does not allow; the method's side raises it as a ContractError."""
