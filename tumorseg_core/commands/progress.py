"""A progress bar for terminals that stays silent when output is piped or logged."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class TerminalProgress:
    """Callable ``(fraction, message)`` drawing one updating line on a TTY, nothing otherwise."""

    def __init__(self, stream: Optional[TextIO] = None, enabled: Optional[bool] = None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.width = width
        self.started = time.perf_counter()
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        # Redrawing more than ~10 times a second only costs time on slow terminals.
        if fraction < 1.0 and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        filled = int(round(self.width * max(0.0, min(1.0, fraction))))
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"\r[{bar}] {fraction * 100:5.1f}% {now - self.started:6.1f}s {message[:40]:<40}"
        self.stream.write(line)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line so later output starts on a fresh one."""
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
