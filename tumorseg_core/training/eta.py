"""How long a training run will take, said early, and progress lines that work in a log file.

:class:`TrainingClock` is told about every finished iteration. From the first few it
measures the seconds per iteration (the first iteration, which pays for warm-up, is
left out when later ones exist) and logs, within the first minute, one line with the
estimated time per epoch and for the whole run; it warns when that exceeds the run's
time limit, or two hours on a CPU. After that it logs a progress line every
``log_every_s`` seconds (iteration, loss, time left), which is what a piped or
background run shows instead of a progress bar. Lines go to this module's logger, at
INFO (the warning at WARNING).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

logger = logging.getLogger(__name__)

#: Warn on a CPU when the estimated run is longer than this.
CPU_WARN_SECONDS = 2 * 3600.0
#: Iterations timed (after the first) before the estimate is given...
TIMED_ITERATIONS = 3
#: ...or this many seconds after the first iteration ended, whichever comes first.
ESTIMATE_AFTER_S = 20.0


def format_duration(seconds: float) -> str:
    """``"3 h 25 min"``, ``"12 min 30 s"`` or ``"45 s"``."""
    seconds = max(0.0, float(seconds))
    if seconds >= 3600:
        hours, rest = divmod(int(round(seconds / 60.0)), 60)
        return f"{hours} h {rest} min"
    if seconds >= 60:
        minutes, rest = divmod(int(round(seconds)), 60)
        return f"{minutes} min {rest} s"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


class TrainingClock:
    """Seconds per iteration, the run's estimate and periodic progress lines (rank 0 only).

    Args:
        epochs: epochs of the run.
        iterations_per_epoch: iterations of each epoch.
        device_type: ``"cpu"``, ``"cuda"``, ... (the two-hour warning is for CPUs).
        time_limit_minutes: the run's limit, or None.
        log_every_s: seconds between progress lines; 0 for none.
        clock: the time source (seconds), for tests.
    """

    def __init__(self, epochs: int, iterations_per_epoch: int, device_type: str,
                 time_limit_minutes: float | None, log_every_s: float,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.epochs = int(epochs)
        self.iterations_per_epoch = int(iterations_per_epoch)
        self.device_type = device_type
        self.time_limit_minutes = time_limit_minutes
        self.log_every_s = float(log_every_s)
        self.clock = clock
        self.started = clock()
        self.seconds_per_iteration: float | None = None
        self.validation_s = 0.0
        self._last_step = clock()  # end of the previous iteration (or start of the epoch)
        self._first_end: float | None = None  # end of this process's first iteration
        self._timed = 0  # iterations timed after the first, before the estimate
        self._last_line = clock()

    def start_epoch(self) -> None:
        """Call when an epoch's iterations begin (validation and data set-up are not timed)."""
        self._last_step = self.clock()

    def iteration_done(self, epoch: int, done: int, loss: float) -> None:
        """Iteration ``done`` (1-based) of 0-based ``epoch`` finished; ``loss`` is the epoch's mean so far."""
        now = self.clock()
        step_s, self._last_step = now - self._last_step, now
        last_of_epoch = done == self.iterations_per_epoch
        if self._first_end is None:
            # The first iteration pays for warm-up: time the ones after it when there are any.
            self._first_end = now
            if last_of_epoch or step_s >= 1.5 * ESTIMATE_AFTER_S:
                self._estimate(step_s, epoch, done)
        elif self.seconds_per_iteration is None:
            self._timed += 1
            mean_s = (now - self._first_end) / self._timed
            if self._timed >= TIMED_ITERATIONS or now - self._first_end >= ESTIMATE_AFTER_S or last_of_epoch:
                self._estimate(mean_s, epoch, done)
        else:  # a running mean for the progress lines
            self.seconds_per_iteration = 0.8 * self.seconds_per_iteration + 0.2 * step_s
        if self.log_every_s > 0 and now - self._last_line >= self.log_every_s:
            self._last_line = now
            left = (self.seconds_per_iteration or step_s) * (self.iterations_per_epoch - done)
            logger.info("epoch %d/%d, iteration %d/%d: loss %.4f, %.2f s/iteration, about %s left in this epoch",
                        epoch + 1, self.epochs, done, self.iterations_per_epoch, loss,
                        self.seconds_per_iteration or step_s, format_duration(left))

    def _estimate(self, seconds_per_iteration: float, epoch: int, done: int) -> None:
        self.seconds_per_iteration = seconds_per_iteration
        epoch_s = seconds_per_iteration * self.iterations_per_epoch
        left_iterations = (self.epochs - epoch) * self.iterations_per_epoch - done
        total_s = (self.clock() - self.started) + seconds_per_iteration * left_iterations
        logger.info("estimate: %.2f s per iteration, %s per epoch of %d iterations (plus validation), "
                    "about %s in total for %d epoch(s)", seconds_per_iteration, format_duration(epoch_s),
                    self.iterations_per_epoch, format_duration(total_s), self.epochs)
        self._warn_if_long(total_s)

    def epoch_done(self, epoch: int, validation_s: float) -> None:
        """After epoch ``epoch`` (0-based) and its validation: log the time still needed."""
        self.validation_s = max(self.validation_s, float(validation_s))
        if self.seconds_per_iteration is None or epoch + 1 >= self.epochs:
            return
        left = self.epochs - epoch - 1
        left_s = left * (self.seconds_per_iteration * self.iterations_per_epoch + self.validation_s)
        logger.info("about %s left for %d more epoch(s)", format_duration(left_s), left)

    def _warn_if_long(self, total_s: float) -> None:
        limit = self.time_limit_minutes
        if limit is not None and total_s > 60.0 * float(limit):
            logger.warning("the estimated %s exceed --time-limit %s min: training stops after the last epoch "
                           "that fits; lower --epochs or --iterations-per-epoch to train them all",
                           format_duration(total_s), limit)
        elif limit is None and self.device_type == "cpu" and total_s > CPU_WARN_SECONDS:
            logger.warning("training on the CPU will take about %s: lower --epochs or --iterations-per-epoch, "
                           "use a smaller --patch-size, or train on a GPU", format_duration(total_s))


def checkpoint_due(last_checkpoint_s: float, interval_minutes: float, now_s: float) -> bool:
    """True when ``interval_minutes`` have passed since the last checkpoint (every iteration for 0)."""
    return now_s - last_checkpoint_s >= 60.0 * float(interval_minutes)
