"""Window runners: the one network call the sliding-window Predictor makes, per backend.

A :class:`WindowRunner` maps a float32 batch of windows ``(B, C, z, y, x)`` (a CPU or
device ``torch.Tensor``) to logits ``(B, K, z, y, x)`` for ONE fixed window shape (the
model's patch size). Three backends implement it:

- ``torch``: the network module itself (eager PyTorch; CPU, CUDA or MPS).
- ``onnxruntime``: the network exported to ONNX once (cached), run by ONNX Runtime's CPU
  execution provider with one intra-op thread per usable core.
- ``openvino``: the ONNX export converted to OpenVINO IR once (cached), compiled for
  the CPU with every usable core, float32 precision.

``backend="auto"`` picks the fastest installed backend for the device: on the CPU
openvino > onnxruntime > torch; on CUDA/MPS always torch. An ``auto`` choice whose
export or load fails falls back to the next candidate with a warning; a backend named
explicitly fails loudly instead (never a silent switch).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from tumorseg_core.errors import TumorSegError

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
# Backends that run on the CPU only (exported models).
CPU_BACKENDS = ("openvino", "onnxruntime")
_DISTRIBUTIONS = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}
_PIP_HINT = "pip install tumorseg-core[fast] (or onnx onnxruntime openvino)"


@runtime_checkable
class WindowRunner(Protocol):
    """Callable ``(B, C, z, y, x) float32 tensor -> (B, K, z, y, x) logits`` for a fixed window."""

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover - protocol
        ...


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
        return torch.__version__
    try:
        return importlib.metadata.version(_DISTRIBUTIONS[name])
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def backend_candidates(name: str, device: torch.device) -> list[str]:
    """Backends to try, best first, for a requested ``name`` on ``device``.

    ``auto`` on the CPU: the installed ones of openvino, onnxruntime, then torch; on
    any other device: torch. An explicit name must be known, installed and (for the
    exported backends) paired with the CPU, else :class:`TumorSegError`.
    """
    key = str(name).strip().lower()
    if key not in BACKENDS:
        raise TumorSegError(f"unknown backend '{name}'; use one of {', '.join(BACKENDS)}")
    if key == "auto":
        if device.type != "cpu":
            return ["torch"]
        return [b for b in CPU_BACKENDS if backend_installed(b)] + ["torch"]
    if key in CPU_BACKENDS:
        if device.type != "cpu":
            raise TumorSegError(f"the {key} backend runs on the CPU only; use --device cpu or --backend torch")
        if not backend_installed(key):
            raise TumorSegError(f"the {key} backend is not installed; {_PIP_HINT}, or use --backend torch")
    return [key]


def prepare_backend(
    networks: Sequence[nn.Module],
    backend: str,
    device: torch.device,
    window_zyx: Sequence[int],
    in_channels: int | None,
    identities: Sequence[str] | None = None,
) -> tuple[str, list[WindowRunner]]:
    """Turn loaded networks into window runners: ``(backend used, one runner per network)``.

    Args:
        networks: eval-mode modules on ``device``, (B, C, z, y, x) -> (B, K, z, y, x).
        backend: ``auto``, ``torch``, ``onnxruntime`` or ``openvino``.
        device: where the Predictor runs (exported backends need the CPU).
        window_zyx: the fixed window (patch) shape the exports are made for.
        in_channels: input channels C (needed to export; None allows torch only).
        identities: one stable string per network for the export cache key (e.g.
            ``"<package sha256>:fold0.safetensors"``); None hashes each network's weights.
    """
    candidates = backend_candidates(backend, device)
    explicit = str(backend).strip().lower() != "auto"
    for name in candidates:
        if name == "torch":
            from tumorseg_core.inference.backends.torch_backend import torch_runners

            return "torch", torch_runners(networks, device)
        if in_channels is None:
            if explicit:
                raise TumorSegError(f"cannot export this network for {name}: its input channel count is unknown")
            continue
        try:
            return name, _exported_runners(name, networks, window_zyx, in_channels, identities)
        except Exception as exc:  # noqa: BLE001 - auto falls back to the next backend
            if explicit:
                if isinstance(exc, TumorSegError):
                    raise
                raise TumorSegError(f"could not run the model with {name} ({exc}); use --backend torch") from exc
            logger.warning("backend %s unavailable for this model (%s); trying the next one", name, exc)
    raise TumorSegError("no inference backend could run this model")  # unreachable: torch is last


def _exported_runners(
    name: str,
    networks: Sequence[nn.Module],
    window_zyx: Sequence[int],
    in_channels: int,
    identities: Sequence[str] | None,
) -> list[WindowRunner]:
    """Export (or reuse the cached export of) every network and load one runner each."""
    from tumorseg_core.inference.backends.export import ExportSpec, load_or_rebuild
    from tumorseg_core.inference.backends.torch_backend import weights_digest

    if identities is not None and len(identities) != len(networks):
        raise ValueError(f"{len(identities)} identities for {len(networks)} networks")
    runners: list[WindowRunner] = []
    for index, net in enumerate(networks):
        identity = identities[index] if identities is not None else weights_digest(net)
        spec = ExportSpec(net, identity, tuple(int(w) for w in window_zyx), int(in_channels))
        if name == "onnxruntime":
            from tumorseg_core.inference.backends.onnxruntime_backend import OnnxRuntimeRunner as Runner
        else:
            from tumorseg_core.inference.backends.openvino_backend import OpenVinoRunner as Runner  # type: ignore[assignment]
        runners.append(load_or_rebuild(name, spec, Runner))
    logger.info("using the %s backend (%d network(s), window %s)", name, len(runners), tuple(window_zyx))
    return runners
