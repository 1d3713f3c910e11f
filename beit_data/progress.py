"""Progress lines for long work: rate, MB/s and ETA while running, a summary at the end."""
from __future__ import annotations

import sys
import time
from typing import TextIO


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts work done against a total and prints a status line.

    On a terminal the line is redrawn in place; elsewhere (logs, CI) a line is
    printed at most every ``interval`` seconds.
    """

    def __init__(self, label: str, total: int, unit: str = "images", stream: TextIO | None = None,
                 interval: float = 5.0, quiet: bool = False) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = 0.2 if self.tty else interval
        self.quiet = quiet
        self.done = 0
        self.bytes = 0
        self.start = time.monotonic()
        self._last = 0.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def skip(self, n: int) -> None:
        """Count work that was already done before this run (resume) against the total."""
        self.total -= n

    def update(self, n: int, nbytes: int = 0) -> None:
        """Add ``n`` finished units and ``nbytes`` processed bytes."""
        self.done += n
        self.bytes += nbytes
        now = time.monotonic()
        if not self.quiet and (now - self._last >= self.interval or self.done >= self.total):
            self._last = now
            self._print(self.line())

    def line(self) -> str:
        t = max(self.elapsed, 1e-9)
        rate = self.done / t
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = _eta(eta) if rate > 0 else "--:--:--"
        mb = f" {self.bytes / t / 1e6:,.1f} MB/s" if self.bytes else ""
        return f"{self.label}: {self.done}/{self.total} {self.unit} {rate:,.0f} {self.unit}/s{mb} ETA {eta_text}"

    def close(self) -> None:
        """Finish the redrawn line."""
        if self.tty and not self.quiet and self._last:
            self.stream.write("\n")
            self.stream.flush()

    def _print(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
