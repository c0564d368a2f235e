"""A progress bar for terminals that fits the terminal's width and stays silent when output is piped."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Optional, TextIO

#: Widest bar drawn, in characters between the brackets.
MAX_BAR = 30
#: Narrowest bar still worth drawing; a narrower terminal gets the percentage only.
MIN_BAR = 5


def fit_line(fraction: float, elapsed_s: float, message: str, columns: int) -> str:
    """One progress line of at most ``columns - 1`` characters (the last column would wrap on some terminals).

    The parts are dropped in this order as the terminal narrows: the message is cut, then
    left out, then the bar shrinks to :data:`MIN_BAR` and goes; the percentage stays.
    """
    width = max(1, columns - 1)
    fraction = max(0.0, min(1.0, fraction))
    numbers = f"{fraction * 100:5.1f}% {elapsed_s:6.1f}s"
    bar_width = min(MAX_BAR, width - len(numbers) - 3 - 12)  # "[", "] " and room for 12 message characters
    if bar_width < MIN_BAR:
        bar_width = min(MAX_BAR, width - len(numbers) - 3)
    if bar_width >= MIN_BAR:
        filled = int(round(bar_width * fraction))
        head = f"[{'#' * filled}{'-' * (bar_width - filled)}] {numbers}"
    else:
        head = numbers
    room = width - len(head) - 1
    line = f"{head} {message[:room]}" if room >= 4 else head
    return line[:width]


class TerminalProgress:
    """Callable ``(fraction, message)`` drawing one updating line on a TTY, nothing otherwise.

    The line is redrawn to the terminal's current width (``shutil.get_terminal_size``, which
    honours ``$COLUMNS``) and never wraps; :meth:`close` erases it, so what is printed after
    the bar (an error, the result's summary) stands on a clean line.
    """

    def __init__(self, stream: Optional[TextIO] = None, enabled: Optional[bool] = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.perf_counter()
        self._last_draw = 0.0
        self._drawn = 0  # length of the line on screen

    def __call__(self, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        # Redrawing more than ~10 times a second only costs time on slow terminals.
        if fraction < 1.0 and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        line = fit_line(fraction, now - self.started, " ".join(message.split()), shutil.get_terminal_size().columns)
        # Spaces over what is left of a longer earlier line, then back to its end.
        self.stream.write("\r" + line.ljust(self._drawn))
        self.stream.flush()
        self._drawn = len(line)

    def close(self) -> None:
        """Erase the bar's line so later output starts on a clean one."""
        if self.enabled and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0
