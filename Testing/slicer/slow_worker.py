"""A test-only worker: ``tumorseg_core.worker`` whose runs sleep at every progress report.

Tests start it instead of the real worker (:class:`SlowRunner`) so that they can cancel, or
kill, a run in the middle. The shipped worker has no such hook.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import List

SLEEP_S = 0.3


def _slow_down() -> None:
    from tumorseg_core.inference.segmenter import Segmenter

    segment = Segmenter.segment

    def slow_segment(self, images, progress=None, cancel=None, **overrides):
        def sleepy(fraction, message):
            progress(fraction, message)
            time.sleep(SLEEP_S)

        return segment(self, images, progress=sleepy if progress else None, cancel=cancel, **overrides)

    Segmenter.segment = slow_segment


def runner_class():
    """:class:`WorkerRunner` starting this script instead of ``python -m tumorseg_core.worker``."""
    from TumorSegmentationLib.runner import WorkerRunner

    class SlowRunner(WorkerRunner):
        def command(self) -> List[str]:
            real = super().command()
            module = real.index("-m")
            return [*real[:module], str(Path(__file__).resolve()), *real[module + 2:]]

    return SlowRunner


if __name__ == "__main__":
    _slow_down()
    from tumorseg_core import worker

    code = worker.main(sys.argv[1:])
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)  # as the real worker does (its stdin reader thread may still block)
