"""The ONNX Runtime backend: a cached ONNX export run on the CPU execution provider."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tumorseg_core.inference.devices import configured_threads

logger = logging.getLogger(__name__)


class OnnxRuntimeRunner:
    """Window runner: (B, C, z, y, x) float32 array -> (B, K, z, y, x) float32 logits (CPU).

    numpy in and out: a run on this backend never imports torch.

    Args:
        folder: an export folder holding ``model.onnx`` (fixed window, dynamic batch).
        threads: intra-op threads (default: ``devices.configured_threads()``).
    """

    name = "onnxruntime"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        self._open(str(Path(folder) / "model.onnx"), threads)

    def _open(self, model: str | bytes, threads: int | None) -> None:
        """One sequential CPU session for a graph file path or serialized graph bytes."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or configured_threads())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.threads = options.intra_op_num_threads

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a batch of windows; the input may be non-contiguous (flipped)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        (logits,) = self.session.run(None, {self.input_name: x})
        return np.asarray(logits, dtype=np.float32)
