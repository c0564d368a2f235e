"""The click network for Slicer's UI process: the question is asked here, the worker answers it.

:class:`WorkerClickNet` is an :class:`tumorseg_core.interactive.learned.Estimator` for
``InteractiveSession(image, estimator=...)``. It builds the cube around the click and its input
channels in this process (:func:`tumorseg_core.clicknet.cube.cube_inputs`: numpy and SimpleITK)
and sends them to the warm background worker as a ``click`` request (``tumorseg_core.worker``),
which runs the network. Slicer's UI process never imports torch. Each answer is waited for (the
editor shows a wait cursor): a warm worker answers in well under a second; the first click also
pays for starting the worker and loading the network. No answer within :data:`CLICK_TIMEOUT_S`,
a worker that cannot start or an error answer raise :class:`ClickNetworkUnavailable`, after
which the caller goes on without the network. Qt-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from tumorseg_core.clicknet.cube import cube_inputs
from tumorseg_core.clicknet.grid import SIZE
from tumorseg_core.errors import InputError, TumorSegError
from tumorseg_core.interactive.crop import Crop
from tumorseg_core.worker import SLICE_ENCODING, pack_array, unpack_array

#: Seconds to wait for the worker's answer to one click (the first one starts the worker and loads torch).
CLICK_TIMEOUT_S = 30.0


def shipped_click_network() -> Path:
    """Where the click network ships, ``tumorseg_core/data/clicknet`` (as ``clicknet.predict.shipped_folder``,
    which cannot be imported here: it imports torch)."""
    import tumorseg_core

    return Path(tumorseg_core.__file__).resolve().parent / "data" / "clicknet"


def has_click_network(folder: Path) -> bool:
    """True when ``folder`` looks like a click network (it has a manifest; the worker verifies the rest)."""
    return (Path(folder) / "manifest.json").is_file()


class ClickNetworkUnavailable(TumorSegError):
    """The worker could not answer a click: it did not start, failed, or did not answer in time."""


class WorkerClickNet:
    """P(lesion) on the cube around the first foreground click, computed by the worker's click network.

    Args:
        runner: the ``WorkerRunner`` of the Slicer session (shared with Auto and Live).
        folder: the click network's folder (sent to the worker, which verifies and loads it).
        timeout: seconds to wait for each answer.
    """


    def __init__(self, runner: Any, folder: Path, timeout: float = CLICK_TIMEOUT_S) -> None:
        self.runner = runner
        self.folder = Path(folder)
        self.timeout = float(timeout)

    def probability(self, image: sitk.Image, fg_lps: Sequence[Sequence[float]],
                    bg_lps: Sequence[Sequence[float]] = (), previous: Optional[sitk.Image] = None
                    ) -> tuple[Crop, np.ndarray]:
        """(the cube centred on ``fg_lps[0]``, P(lesion) (z, y, x) float32 on it)."""
        crop, inputs = cube_inputs(image, fg_lps, bg_lps, previous)
        return crop, self.forward(inputs)

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        """The worker's P(lesion) (SIZE, SIZE, SIZE) float32 for one cube's inputs (CHANNELS, SIZE, SIZE, SIZE)."""
        runner = self.runner
        if runner.busy:
            raise InputError("the segmentation worker is busy (an Auto run or a Live preview); "
                             "click again when it has finished")
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        request = {"cmd": "click", "inputs": pack_array(inputs), "shape": list(inputs.shape),
                   "network": str(self.folder)}
        try:
            rid = runner.submit(request)
        except (OSError, RuntimeError) as exc:
            raise ClickNetworkUnavailable(f"could not start the segmentation worker: {exc}") from exc
        for event in runner.wait_for(rid, timeout=self.timeout):
            if event.get("id") != rid:
                continue
            if event.get("event") == "click":
                return self._decode(event)
            if event.get("event") == "error":
                raise ClickNetworkUnavailable(f"the click network failed: {event.get('message') or 'no reason given'}")
        runner.cancel()  # the worker may be stuck: stop it (the next request starts a new one)
        raise ClickNetworkUnavailable(f"the worker did not answer the click within {self.timeout:.0f} s")

    @staticmethod
    def _decode(event: dict) -> np.ndarray:
        shape = [SIZE] * 3
        if event.get("encoding") != SLICE_ENCODING or event.get("dtype") != "float32" or event.get("shape") != shape:
            raise ClickNetworkUnavailable(f"the worker's click answer is not a float32 {shape} array; please report this")
        try:
            return unpack_array(event.get("probability"), shape, "float32")
        except TumorSegError as exc:
            raise ClickNetworkUnavailable(f"the worker's click answer is corrupt ({exc})") from exc
