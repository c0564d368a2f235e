"""Window runners: the one network call the sliding-window Predictor makes, per backend.

A window runner maps a float32 batch of windows ``(B, C, z, y, x)`` to logits
``(B, K, z, y, x)`` for ONE fixed window shape (the model's patch size). Three backends
implement it:

- ``torch``: the network module itself (eager PyTorch; CPU, CUDA or MPS; torch tensors).
- ``onnxruntime``: the network exported to ONNX once (cached), run by ONNX Runtime's CPU
  execution provider with one intra-op thread per usable core.
- ``openvino``: the ONNX export converted to OpenVINO IR once (cached), compiled for
  the CPU with every usable core, float32 precision.

A package whose architecture is ``onnx`` (an imported ONNX graph) is never re-exported:
its network already runs the stored graph with ONNX Runtime, so ``auto`` and ``torch``
call the module, ``onnxruntime`` runs the stored graph directly on numpy arrays, and
``openvino`` is refused (:func:`_stored_graph_runners`).

``backend="auto"`` picks the fastest installed backend for the device: on the CPU
openvino > onnxruntime > torch; on CUDA/MPS always torch. An ``auto`` choice whose
export or load fails falls back to the next candidate with a warning; a backend named
explicitly fails loudly instead (never a silent switch).

The exported runners take and return numpy arrays, and their networks come as
:class:`LazyNetworks`: when every network's cached export is valid, the weights are never
loaded and torch is never imported (~200 MB and ~1.5 s less per process).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tumorseg_core.errors import TumorSegError
from tumorseg_core.options import BACKENDS  # the one list of backend names (re-exported here)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from torch import nn

logger = logging.getLogger(__name__)

# Backends that run on the CPU only (exported models).
CPU_BACKENDS = ("openvino", "onnxruntime")
_DISTRIBUTIONS = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}
_PIP_HINT = "pip install tumorseg-core[fast] (or onnx onnxruntime openvino)"


# A window runner: an ``nn.Module`` (torch tensors) or an exported runner (numpy arrays).
WindowRunner = Callable[[Any], Any]


class LazyNetworks:
    """A model's networks, built (importing torch) only when something needs the modules.

    Args:
        load: returns the eval-mode modules, (B, C, z, y, x) -> (B, K, z, y, x) logits.
        count: how many ``load`` returns (known from the package without loading).
    """

    def __init__(self, load: Callable[[], Sequence["nn.Module"]], count: int) -> None:
        self._load = load
        self._count = int(count)
        self._modules: list[nn.Module] | None = None

    @classmethod
    def of(cls, modules: Sequence["nn.Module"]) -> "LazyNetworks":
        """Already-built modules."""
        lazy = cls(lambda: list(modules), len(modules))
        lazy._modules = list(modules)
        return lazy

    def __len__(self) -> int:
        return self._count

    @property
    def loaded(self) -> bool:
        return self._modules is not None

    def modules(self) -> list["nn.Module"]:
        """The modules (loaded on the first call, with the configured CPU threads)."""
        if self._modules is None:
            from tumorseg_core.inference.devices import import_torch

            import_torch()
            self._modules = list(self._load())
            if len(self._modules) != self._count:
                raise TumorSegError(f"the model loaded {len(self._modules)} networks, expected {self._count}")
        return self._modules


def backend_installed(name: str) -> bool:
    """True when ``name``'s Python package (and, for exports, ``onnx``) can be imported."""
    if name == "torch":
        return True
    if name not in CPU_BACKENDS:
        return False
    return importlib.util.find_spec(name) is not None and importlib.util.find_spec("onnx") is not None


def backend_version(name: str) -> str:
    """Installed version of a backend's package (part of the export cache key)."""
    if name == "torch":
        loaded = sys.modules.get("torch")
        if loaded is not None:
            return str(loaded.__version__)
    try:
        return importlib.metadata.version(_DISTRIBUTIONS[name])
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def backend_candidates(name: str, device: Any) -> list[str]:
    """Backends to try, best first, for a requested ``name`` on ``device``.

    ``auto`` on the CPU: the installed ones of openvino, onnxruntime, then torch; on
    any other device: torch. An explicit name must be known, installed and (for the
    exported backends) paired with the CPU, else :class:`TumorSegError`.
    """
    device_type = str(getattr(device, "type", device)).split(":")[0]
    key = str(name).strip().lower()
    if key not in BACKENDS:
        raise TumorSegError(f"unknown backend '{name}'; use one of {', '.join(BACKENDS)}")
    if key == "auto":
        if device_type != "cpu":
            return ["torch"]
        return [b for b in CPU_BACKENDS if backend_installed(b)] + ["torch"]
    if key in CPU_BACKENDS:
        if device_type != "cpu":
            raise TumorSegError(f"the {key} backend runs on the CPU only; use --device cpu or --backend torch")
        if not backend_installed(key):
            raise TumorSegError(f"the {key} backend is not installed; {_PIP_HINT}, or use --backend torch")
    return [key]


def prepare_backend(
    networks: "LazyNetworks | Sequence[nn.Module]",
    backend: str,
    device: Any,
    window_zyx: Sequence[int],
    in_channels: int | None,
    identities: Sequence[str] | None = None,
    stored_graph: bool = False,
) -> tuple[str, list[WindowRunner]]:
    """Turn loaded networks into window runners: ``(backend used, one runner per network)``.

    Args:
        networks: eval-mode modules, (B, C, z, y, x) -> (B, K, z, y, x), or
            :class:`LazyNetworks` (loaded only for torch or to build a missing export).
        backend: ``auto``, ``torch``, ``onnxruntime`` or ``openvino``.
        device: where the Predictor runs, a name or ``torch.device`` (exported backends
            need the CPU).
        window_zyx: the fixed window (patch) shape the exports are made for.
        in_channels: input channels C (needed to export; None allows torch only).
        identities: one stable string per network for the export cache key (e.g.
            ``"<package sha256>:fold0.safetensors"``); None hashes each network's weights.
        stored_graph: the networks are imported ONNX graphs (architecture ``onnx``): no
            export; see :func:`_stored_graph_runners`.
    """
    lazy = networks if isinstance(networks, LazyNetworks) else LazyNetworks.of(networks)
    if stored_graph:
        return _stored_graph_runners(lazy, backend, device)
    candidates = backend_candidates(backend, device)
    explicit = str(backend).strip().lower() != "auto"
    for name in candidates:
        if name == "torch":
            from tumorseg_core.inference.backends.torch_backend import torch_runners

            return "torch", torch_runners(lazy.modules(), device)
        if in_channels is None:
            if explicit:
                raise TumorSegError(f"cannot export this network for {name}: its input channel count is unknown")
            continue
        try:
            return name, _exported_runners(name, lazy, window_zyx, in_channels, identities)
        except Exception as exc:  # noqa: BLE001 - auto falls back to the next backend
            if explicit:
                if isinstance(exc, TumorSegError):
                    raise
                raise TumorSegError(f"could not run the model with {name} ({exc}); use --backend torch") from exc
            logger.warning("backend %s unavailable for this model (%s); trying the next one", name, exc)
    raise TumorSegError("no inference backend could run this model")  # unreachable: torch is last


def _stored_graph_runners(networks: LazyNetworks, backend: str, device: Any) -> tuple[str, list[WindowRunner]]:
    """Runners for imported ONNX graphs: the modules (``auto``/``torch``) or their graphs on numpy (``onnxruntime``)."""
    key = str(backend).strip().lower()
    backend_candidates(backend, device)  # known name, installed, CPU for the exported backends
    if key == "openvino":
        raise TumorSegError("this model is an imported ONNX graph, which runs on ONNX Runtime; "
                            "use --backend auto, onnxruntime or torch")
    if key == "onnxruntime":
        from tumorseg_core.inference.devices import configured_threads

        modules = networks.modules()
        for module in modules:
            module.session(configured_threads())
        logger.info("using the onnxruntime backend on the stored ONNX graph(s) (%d network(s))", len(modules))
        return "onnxruntime", [module.run_numpy for module in modules]
    from tumorseg_core.inference.backends.torch_backend import torch_runners

    return "torch", torch_runners(networks.modules(), device)


def _exported_runners(
    name: str,
    networks: LazyNetworks,
    window_zyx: Sequence[int],
    in_channels: int,
    identities: Sequence[str] | None,
) -> list[WindowRunner]:
    """Export (or reuse the cached export of) every network and load one runner each."""
    from tumorseg_core.inference.backends.export import ExportSpec, load_or_rebuild

    if identities is not None and len(identities) != len(networks):
        raise ValueError(f"{len(identities)} identities for {len(networks)} networks")
    if identities is None:  # no package to name them: hash the weights (this loads them)
        from tumorseg_core.inference.backends.torch_backend import weights_digest

        identities = [weights_digest(net) for net in networks.modules()]
    runners: list[WindowRunner] = []
    for index, identity in enumerate(identities):
        spec = ExportSpec(lambda index=index: networks.modules()[index], identity,
                          tuple(int(w) for w in window_zyx), int(in_channels))
        if name == "onnxruntime":
            from tumorseg_core.inference.backends.onnxruntime_backend import OnnxRuntimeRunner as Runner
        else:
            from tumorseg_core.inference.backends.openvino_backend import OpenVinoRunner as Runner  # type: ignore[assignment]
        runners.append(load_or_rebuild(name, spec, Runner))
    logger.info("using the %s backend (%d network(s), window %s)", name, len(runners), tuple(window_zyx))
    return runners
