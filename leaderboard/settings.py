"""The board's rules for calling a new result a record: one frozen object, so every page uses the same."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BoardSettings:
    """How the board ranks entries and judges records.

    `p_threshold`: a new record is significant when the one-sided Welch test of "its mean is lower than the
    record it beats" gives p below this (modded-nanogpt and parameter-golf use 0.01).
    `min_margin_nats`: and the mean must be lower by at least this much: Slowrun's seed-to-seed noise is
    about 1e-4 nats, record gains 2e-3 to 2e-2, so a gain under 1e-3 is not called a record however many
    seeds make it "significant".
    `confidence`: level of the Student-t interval shown beside each entry's mean.
    """

    p_threshold: float = 0.01
    min_margin_nats: float = 0.001
    confidence: float = 0.95


DEFAULT_SETTINGS = BoardSettings()
