"""The ONNX Runtime backend: a cached ONNX export run on the CPU execution provider."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from tumorseg_core.inference.devices import usable_cpu_count

logger = logging.getLogger(__name__)


class OnnxRuntimeRunner:
    """Window runner: (B, C, z, y, x) float32 tensor -> (B, K, z, y, x) float32 logits (CPU).

    Args:
        folder: an export folder holding ``model.onnx`` (fixed window, dynamic batch).
        threads: intra-op threads (default: every usable core).
    """

    name = "onnxruntime"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or usable_cpu_count())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(Path(folder) / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.threads = options.intra_op_num_threads

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of windows; the input may be non-contiguous (flipped)."""
        x = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run(None, {self.input_name: x})
        return torch.from_numpy(logits)
