"""INT8 window runners: a package's quantized ONNX graphs (``int8`` manifest section) on the CPU.

:func:`int8_wanted` decides, from ``SegmentOptions.precision``, whether a Predictor runs
the package's INT8 networks: ``auto`` does on the CPU with an exported backend (``auto``,
``openvino`` or ``onnxruntime``) when the package has them, and never elsewhere (a GPU
keeps float32/AMP, ``--backend torch`` keeps the modules); ``int8`` insists and says why
it cannot; ``fp32`` never does.

:func:`int8_runners` turns the graphs' bytes (read from the package and hashed again by
``ModelPackage.read_verified``) into window runners with the same contract as the float32
exported backends: numpy ``(B, C, z, y, x)`` float32 in, ``(B, K, z, y, x)`` float32
logits out, for the one fixed window the graphs were made for. OpenVINO reads the ONNX
QDQ graph directly and runs its int8 kernels (``auto``'s first choice), ONNX Runtime
runs it with its QDQ fusions. Each graph is checked as data first
(:func:`~tumorseg_core.models.onnx_network.inspect_onnx`: standard operators only, no
external data, one rank-5 float input); nothing here unpickles anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tumorseg_core.errors import ModelPackageError, TumorSegError
from tumorseg_core.inference.backends import CPU_BACKENDS, backend_candidates, backend_installed
from tumorseg_core.inference.backends.onnxruntime_backend import OnnxRuntimeRunner
from tumorseg_core.inference.backends.openvino_backend import OpenVinoRunner, import_openvino
from tumorseg_core.inference.devices import configured_threads

logger = logging.getLogger(__name__)

GraphSource = Callable[[], bytes]


def int8_wanted(precision: str, has_int8: bool, device: Any, backend: str | None) -> bool:
    """Whether to run the INT8 networks, for ``precision`` (``auto``/``fp32``/``int8``).

    ``device``: the resolved device name (``cpu``, ``cuda:0``, ...); ``backend``: the
    requested backend (None means the Predictor's default, ``torch``). ``int8`` that
    cannot be honoured is a TumorSegError saying what to change.
    """
    key = str(precision or "auto").strip().lower()
    device_type = str(getattr(device, "type", device)).split(":")[0]
    backend_key = str(backend or "torch").strip().lower()
    if key == "fp32":
        return False
    if key == "auto":
        return has_int8 and device_type == "cpu" and backend_key != "torch" \
            and any(backend_installed(b) for b in CPU_BACKENDS)
    if key != "int8":
        raise TumorSegError(f"unknown precision {precision!r}; use auto, fp32 or int8")
    if not has_int8:
        raise TumorSegError("this model has no INT8 network; make one with 'tumorseg quantize MODEL -o OUT', "
                            "or use --precision auto or fp32")
    if device_type != "cpu":
        raise TumorSegError("INT8 networks run on the CPU; use --device cpu, or --precision fp32 on the GPU")
    if backend_key == "torch":
        raise TumorSegError("INT8 networks run with openvino or onnxruntime; use --backend auto, openvino or "
                            "onnxruntime, or --precision fp32")
    return True


class Int8OpenVinoRunner(OpenVinoRunner):
    """An INT8 ONNX graph compiled by OpenVINO for the CPU (static batch 1; ``OpenVinoRunner.__call__``).

    Args:
        data: the graph's bytes (ONNX QDQ, fixed window, dynamic batch).
        input_shape: ``(1, C, z, y, x)``, the static shape to compile for.
        threads: inference threads (default: ``devices.configured_threads()``).
    """

    name = "openvino"

    def __init__(self, data: bytes, input_shape: Sequence[int], threads: int | None = None) -> None:
        ov = import_openvino()
        core = ov.Core()
        model = core.read_model(bytes(data))
        model.reshape({model.inputs[0]: ov.PartialShape([int(s) for s in input_shape])})
        self.threads = int(threads or configured_threads())
        # f32 for the layers left in float (norms, softmax); the QDQ layers run int8 kernels.
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.threads,
                  "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()


class Int8OnnxRuntimeRunner(OnnxRuntimeRunner):
    """An INT8 ONNX graph run by ONNX Runtime's CPU provider (``OnnxRuntimeRunner.__call__``)."""

    name = "onnxruntime"

    def __init__(self, data: bytes, threads: int | None = None) -> None:
        self._open(bytes(data), threads)


def _checked(source: GraphSource, index: int, shape: Sequence[int]) -> bytes:
    """A graph's verified bytes, inspected as ONNX data; ModelPackageError unless it takes ``shape``'s windows."""
    from tumorseg_core.models.onnx_network import inspect_onnx

    data = source()
    info = inspect_onnx(data, f"INT8 network {index}")
    expected = (shape[1], *shape[2:])
    found = (info.in_channels, *info.spatial_zyx)
    if any(f is not None and f != e for f, e in zip(found, expected)):
        raise ModelPackageError(f"INT8 network {index} takes (C, z, y, x) windows {found}, the model {expected}; "
                                "quantize the package again")
    return data


def int8_runners(
    graphs: Sequence[GraphSource], backend: str, device: Any, window_zyx: Sequence[int], in_channels: int,
) -> tuple[str, list[Callable[[np.ndarray], np.ndarray]]]:
    """``(backend used, one runner per graph)`` for the INT8 graphs on the CPU.

    ``auto`` tries openvino, then onnxruntime (the next one after a failure, with a
    warning); a backend named explicitly fails loudly. ``graphs``: callables returning each
    graph's verified bytes.
    """
    candidates = [b for b in backend_candidates(backend, device) if b in CPU_BACKENDS]
    explicit = str(backend).strip().lower() != "auto"
    if not candidates:
        raise TumorSegError("INT8 networks need openvino or onnxruntime; pip install tumorseg-core[fast], "
                            "or use --precision fp32")
    shape = (1, int(in_channels), *(int(w) for w in window_zyx))
    datas = [_checked(source, i, shape) for i, source in enumerate(graphs)]
    for name in candidates:
        try:
            if name == "openvino":
                runners: list = [Int8OpenVinoRunner(data, shape) for data in datas]
            else:
                runners = [Int8OnnxRuntimeRunner(data) for data in datas]
        except Exception as exc:  # noqa: BLE001 - auto falls back to the next backend
            if explicit:
                raise TumorSegError(f"could not run the INT8 network with {name} ({str(exc).splitlines()[0][:200]}); "
                                    "use --precision fp32") from exc
            logger.warning("INT8 network not loadable with %s (%s); trying the next backend", name, exc)
            continue
        logger.info("using the INT8 network(s) on %s (%d network(s), window %s)", name, len(runners),
                    tuple(window_zyx))
        return name, runners
    raise TumorSegError("no CPU backend could load the INT8 network; use --precision fp32")
