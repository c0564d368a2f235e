"""An imported ONNX graph as a registry network (architecture ``onnx``).

:class:`OnnxNetwork` is a ``torch.nn.Module`` whose only state is the ONNX file's bytes,
a ``uint8`` buffer named ``graph``: a package stores them in ``fold0.safetensors`` like
any other weights, so the loader's strict state-dict check and sha256 verification apply
unchanged. Its forward runs the graph with ONNX Runtime (CPU execution provider; one
``InferenceSession`` built from the buffer on first use) on ``(B, C, z, y, x)`` float32
and returns the logits as a tensor on the input's device.

:func:`inspect_onnx` is the import-time check: one float input of rank 5, one output of
rank 5, standard operator domains only, no external data, ``onnx.checker`` clean.
onnx, onnxruntime and torch are imported inside the functions that need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Tuple

from tumorseg_core.errors import ModelPackageError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch

ARCHITECTURE = "onnx"
#: Operator domains of the ONNX standard (every other domain is a custom operator set).
STANDARD_DOMAINS = ("", "ai.onnx")
_ONNX_FLOAT = 1  # onnx.TensorProto.FLOAT


@dataclass(frozen=True)
class OnnxGraphInfo:
    """What :func:`inspect_onnx` read from a graph (``None``: a dynamic dimension)."""

    input_name: str
    in_channels: Optional[int]
    out_channels: Optional[int]
    batch: Optional[int]
    spatial_zyx: Tuple[Optional[int], Optional[int], Optional[int]]


def _dims(value_info: Any) -> Tuple[Optional[int], ...]:
    shape = value_info.type.tensor_type.shape
    return tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in shape.dim)


def _custom_domains(graph: Any) -> set:
    """Operator domains outside the standard used by ``graph`` and its subgraphs."""
    found = set()
    for node in graph.node:
        if node.domain not in STANDARD_DOMAINS:
            found.add(node.domain)
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                found |= _custom_domains(sub)
    return found


def _has_external_data(graph: Any) -> bool:
    import onnx

    tensors = list(graph.initializer) + [a.t for n in graph.node for a in n.attribute if a.HasField("t")]
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors)


def inspect_onnx(data: bytes, where: str = "model.onnx") -> OnnxGraphInfo:
    """Check an ONNX file's bytes and describe its input and output; ModelPackageError otherwise.

    Refused: a file onnx cannot parse, external data, custom operator domains, anything
    ``onnx.checker.check_model`` rejects, not exactly one float input and one output of
    rank 5 ``(B, C, z, y, x)``, or fixed output spatial sizes that differ from the input's.
    """
    import onnx

    try:
        model = onnx.load_model_from_string(data)  # bytes: external data is never loaded
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not an ONNX file"
        raise ModelPackageError(f"refusing {where}: it is not a readable ONNX file ({type(exc).__name__})") from exc
    if not model.graph.node:
        raise ModelPackageError(f"refusing {where}: it is not a readable ONNX file (its graph is empty)")
    if _has_external_data(model.graph):
        raise ModelPackageError(f"refusing {where}: it stores tensors in external data files; external data files "
                                "are not supported (save the model as one file)")
    custom = sorted(_custom_domains(model.graph) | {f.domain for f in model.functions})
    if custom:
        raise ModelPackageError(f"refusing {where}: it uses custom operator domain {', '.join(custom)}; "
                                "only standard ONNX operators can be imported")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - onnx raises ValidationError (and others) here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelPackageError(f"refusing {where}: onnx.checker rejects it ({first[:200]})") from exc
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ModelPackageError(f"refusing {where}: it has {len(inputs)} input(s) and {len(model.graph.output)} "
                                "output(s); TumorSeg runs graphs with one image input and one output")
    if inputs[0].type.tensor_type.elem_type != _ONNX_FLOAT:
        raise ModelPackageError(f"refusing {where}: its input is not float32")
    in_dims, out_dims = _dims(inputs[0]), _dims(model.graph.output[0])
    if len(in_dims) != 5 or len(out_dims) != 5:
        raise ModelPackageError(f"refusing {where}: its input has rank {len(in_dims)} and its output rank "
                                f"{len(out_dims)}; both must be 5 (B, C, z, y, x)")
    for i, o in zip(in_dims[2:], out_dims[2:]):
        if i is not None and o is not None and i != o:
            raise ModelPackageError(f"refusing {where}: its output's spatial size {out_dims[2:]} differs from its "
                                    f"input's {in_dims[2:]}; TumorSeg needs logits on the input's grid")
    return OnnxGraphInfo(inputs[0].name, in_dims[1], out_dims[1], in_dims[0],
                         (in_dims[2], in_dims[3], in_dims[4]))


def _onnx_runtime_session(data: bytes, threads: int) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelPackageError("this model is an imported ONNX graph and needs onnxruntime: "
                                "pip install onnxruntime") from exc

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


class _Lazy:
    """Builds the nn.Module subclass on first use, so importing this module needs no torch."""

    cls: Any = None


def build_onnx_network(in_channels: int, out_channels: int, num_bytes: int) -> "torch.nn.Module":
    """The registry builder: an empty (zero) ``graph`` buffer of ``num_bytes``, filled by the state dict."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("num_bytes", num_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelPackageError(f"architecture 'onnx' kwarg {name} must be a positive integer, got {value!r}")
    if _Lazy.cls is None:
        _Lazy.cls = _define_class()
    return _Lazy.cls(in_channels, out_channels, num_bytes)


def _define_class() -> Any:
    import numpy as np
    import torch

    class OnnxNetwork(torch.nn.Module):
        """An ONNX graph (its file's bytes in the ``graph`` buffer) run by ONNX Runtime on the CPU."""

        def __init__(self, in_channels: int, out_channels: int, num_bytes: int) -> None:
            super().__init__()
            self.in_channels = int(in_channels)
            self.out_channels = int(out_channels)
            self.register_buffer("graph", torch.zeros(int(num_bytes), dtype=torch.uint8))
            self._session: Any = None
            self._info: Optional[OnnxGraphInfo] = None

        def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
            super()._load_from_state_dict(*args, **kwargs)
            self._session = None  # new bytes: rebuild the session on next use
            self._info = None

        def onnx_bytes(self) -> bytes:
            """The stored ONNX file."""
            return self.graph.detach().to("cpu").contiguous().numpy().tobytes()

        def session(self, threads: Optional[int] = None) -> Any:
            """The ONNX Runtime session (built once; ``threads`` default: torch's CPU threads)."""
            if self._session is None:
                data = self.onnx_bytes()
                self._info = inspect_onnx(data)
                self._session = _onnx_runtime_session(data, threads or torch.get_num_threads())
            return self._session

        def run_numpy(self, batch: "np.ndarray") -> "np.ndarray":
            """(B, C, z, y, x) float32 array -> (B, K, z, y, x) float32 logits."""
            session = self.session()
            assert self._info is not None
            x = np.ascontiguousarray(batch, dtype=np.float32)
            name = self._info.input_name
            if self._info.batch is not None and x.shape[0] != self._info.batch:  # a graph with a fixed batch
                step = self._info.batch
                parts = [session.run(None, {name: x[i:i + step]})[0] for i in range(0, x.shape[0], step)]
                return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
            (logits,) = session.run(None, {name: x})
            return np.asarray(logits, dtype=np.float32)

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            array = x.detach().to("cpu", torch.float32).contiguous().numpy()
            return torch.from_numpy(self.run_numpy(array)).to(x.device)

    return OnnxNetwork


def onnx_size_divisor(kwargs: Any) -> Tuple[int, int, int]:
    """Any window size: the graph's own fixed sizes are checked against patch_size at import."""
    return (1, 1, 1)
