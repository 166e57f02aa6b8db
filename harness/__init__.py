"""Slowrun harness: data, measured epoch accounting, evaluation, scoring and records."""

__version__ = "0.1.0"
