"""Static INT8 post-training quantization of one exported float32 ONNX window graph.

ONNX Runtime's ``quantize_static`` in QDQ format: the weights of every convolution
(``Conv``, ``ConvTranspose``; also ``MatMul``/``Gemm`` where a network has them) become
int8, symmetric, one scale per output channel; the activations entering them become
uint8 with a scale and zero point from the min/max the calibration windows reach
(``CalibrationMethod.MinMax``). Normalization layers, the softmax and everything else
stay float32. The result is a standard ONNX graph (``QuantizeLinear``/``DequantizeLinear``
pairs around the quantized layers) that OpenVINO runs with int8 kernels and ONNX Runtime
with its QDQ fusions.

Calibration windows are what the network sees at inference: preprocessed (resampled,
normalized) volumes cut into its fixed window, ``(1, C, z, y, x)`` float32 each.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from tumorseg_core.errors import TumorSegError

logger = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def quantizer_name() -> str:
    """What made the graphs, for the manifest's ``int8.quantizer``."""
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__} quantize_static QDQ, int8 per-channel weights, uint8 MinMax activations"


def conv_nodes(graph: Path) -> list[str]:
    """Names of the graph's convolution nodes in graph order (for keeping the first/last in float)."""
    import onnx

    model = onnx.load_model(str(graph), load_external_data=False)
    return [node.name for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose")]


def stage_nodes(graph: Path, levels: int = 2) -> list[str]:
    """The convolutions of the graph's ``levels`` finest resolution stages, in graph order.

    A convolution belongs to them when its output's spatial size is at least the input's
    divided by ``2 ** (levels - 1)`` on every axis (ONNX shape inference on the fixed window):
    for a U-Net, the full-resolution encoder and decoder levels, their up-convolutions and the
    output convolution, then the next level down. Falls back to the first and last
    convolution where the shapes are unknown.
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load_model(str(graph), load_external_data=False))

    def spatial(value) -> tuple[int, ...] | None:
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in value.type.tensor_type.shape.dim][2:]
        return tuple(dims) if dims and all(dims) else None

    shapes = {v.name: spatial(v) for v in (*model.graph.value_info, *model.graph.output)}
    full = spatial(model.graph.input[0])
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    if full is None or any(shapes.get(n.output[0]) is None for n in convs):
        return sorted({convs[0].name, convs[-1].name}) if convs else []
    least = [s / 2 ** (max(1, int(levels)) - 1) for s in full]
    return [n.name for n in convs if all(o >= m for o, m in zip(shapes[n.output[0]], least))]


class _Windows:
    """ONNX Runtime's CalibrationDataReader protocol over a list of windows (re-iterable via ``rewind``)."""

    def __init__(self, input_name: str, windows: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self.windows = windows
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.windows):
            return None
        window = np.ascontiguousarray(self.windows[self._next], dtype=np.float32)
        self._next += 1
        return {self.input_name: window}

    def rewind(self) -> None:
        self._next = 0


def quantize_graph(fp32_graph: Path, windows: Iterable[np.ndarray], exclude_nodes: Sequence[str] = ()) -> bytes:
    """The INT8 QDQ graph's bytes for the float32 graph at ``fp32_graph``, calibrated on ``windows``.

    Args:
        fp32_graph: an ONNX file, input ``(B, C, z, y, x)`` float32 (dynamic batch), output logits.
        windows: calibration inputs, each ``(1, C, z, y, x)`` float32 (at least one).
        exclude_nodes: node names left in float32 (e.g. :func:`stage_nodes`).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batch = [np.asarray(w, dtype=np.float32) for w in windows]
    if not batch or any(w.ndim != 5 or w.shape[0] != 1 for w in batch):
        raise TumorSegError("calibration needs at least one (1, C, z, y, x) window; give more or larger cases")
    input_name = onnx.load_model(str(fp32_graph), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="tumorseg-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        out = Path(tmp) / "int8.onnx"
        # ORT's quantizer logs through the root logger; keep its notes out of the user's console.
        with _quiet_root_logger():
            quant_pre_process(str(fp32_graph), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared), str(out), _Windows(input_name, batch), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=list(exclude_nodes),
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"CalibTensorRangeSymmetric": False, "WeightSymmetric": True},
            )
        data = out.read_bytes()
    logger.info("quantized %s on %d window(s) (%d node(s) kept in float32): %d bytes", fp32_graph.name,
                len(batch), len(exclude_nodes), len(data))
    return data


@contextlib.contextmanager
def _quiet_root_logger():
    """Raise the root logger's level to ERROR for the duration (ORT's quantizer warns through it)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
