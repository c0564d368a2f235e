"""The OpenVINO backend: a cached IR compiled for the CPU (float32, latency mode)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from tumorseg_core.inference.devices import configured_threads

logger = logging.getLogger(__name__)


def import_openvino() -> ModuleType:
    """``import openvino`` without OpenVINO's usage telemetry.

    ``import openvino`` imports its model converter, which sends a "general_import" event to
    an analytics service through a process forked from a helper thread, unless the user
    opted out. A medical imaging tool must not report its use, and the fork deadlocks in a
    process that has other threads (TumorSeg's worker: its stdin reader holds stdin's lock,
    so each forked sender hung forever holding a copy of the worker's memory). With the
    telemetry package unimportable during the import, the converter binds its bundled
    no-op stub instead; the package is importable again afterwards for anyone else.
    """
    if "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import -> ImportError
        try:
            import openvino
        finally:
            del sys.modules["openvino_telemetry"]
        return openvino
    import openvino

    return openvino


class OpenVinoRunner:
    """Window runner: (B, C, z, y, x) float32 array -> (B, K, z, y, x) float32 logits (CPU).

    numpy in and out: a run on this backend never imports torch.

    The IR has a static batch of 1; a batch is run window by window with one infer
    request (all cores work on each window). Precision is pinned to float32 so results
    match torch on every CPU (OpenVINO would pick bfloat16 on CPUs that have it).

    Args:
        folder: an export folder holding ``model.xml`` / ``model.bin``.
        threads: inference threads (default: ``devices.configured_threads()``).
    """

    name = "openvino"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        ov = import_openvino()
        core = ov.Core()
        model = core.read_model(str(Path(folder) / "model.xml"))
        self.threads = int(threads or configured_threads())
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a batch of windows; the input may be non-contiguous (flipped)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        outputs = []
        for item in x:
            self.request.infer({0: item[None]})
            # The request reuses its output buffer: copy before the next window.
            outputs.append(np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True))
        return np.concatenate(outputs, axis=0)
