"""Progress for long work: a tqdm bar on a terminal, a plain line every few seconds anywhere else.

A tqdm bar redrawn into a log file becomes one frame per refresh (the demo's log used to be mostly
frames), so when the stream is not a terminal the same calls print one line every `interval` seconds
(default 10, `$SLOWRUN_PROGRESS_INTERVAL`) and one at the end: done / total, rate, ETA and the latest
annotations. Both forms take the same calls: `update(n)`, `set_postfix(mapping)`, `close()`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Mapping, TextIO

INTERVAL_ENV = "SLOWRUN_PROGRESS_INTERVAL"


def _human(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class PlainProgress:
    """The non-terminal form: lines, never carriage returns."""

    def __init__(self, total: float | None, *, desc: str, unit: str, initial: float = 0, stream: TextIO,
                 interval: float):
        self.total, self.desc, self.unit, self.stream, self.interval = total, desc, unit, stream, interval
        self.n = self._start_n = initial
        self._started = self._last = time.monotonic()
        self._postfix: dict[str, str] = {}
        self._closed = False

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line(now)

    def set_postfix(self, values: Mapping[str, object], refresh: bool = False) -> None:
        self._postfix = {str(k): str(v) for k, v in values.items()}

    def _line(self, now: float) -> None:
        elapsed = now - self._started
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {_human(self.n)}"]
        if self.total:
            parts[0] += f"/{_human(self.total)} {self.unit} ({100 * self.n / self.total:.1f}%)"
        else:
            parts[0] += f" {self.unit}"
        parts.append(f"{_human(rate)} {self.unit}/s")
        parts.append(f"elapsed {_clock(elapsed)}")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        parts.extend(f"{k} {v}" for k, v in self._postfix.items())
        print(", ".join(parts), file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n != self._start_n:
                self._line(time.monotonic())


class _Silent:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix(self, values, refresh: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: float | None, *, desc: str, unit: str = "tok", initial: float = 0, enabled: bool = True,
             stream: TextIO | None = None, interval: float | None = None):
    """A progress reporter: tqdm when `stream` (default stderr) is a terminal, plain lines otherwise."""
    if not enabled:
        return _Silent()
    stream = stream or sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit=unit, unit_scale=True, desc=desc, file=stream,
                    dynamic_ncols=True, smoothing=0.05)
    if interval is None:
        interval = float(os.environ.get(INTERVAL_ENV, "10"))
    return PlainProgress(total, desc=desc, unit=unit, initial=initial, stream=stream, interval=interval)
