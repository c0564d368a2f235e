"""The torch backend: the network modules themselves are the window runners.

Eager PyTorch on any device; the Predictor adds AMP (CUDA), OOM fallback and flip TTA
around it. :func:`weights_digest` gives a network without a package a stable identity
for the export cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import nn


def torch_runners(networks: Sequence[nn.Module], device: torch.device) -> list[nn.Module]:
    """The networks on ``device`` in eval mode; each maps (B, C, z, y, x) -> (B, K, z, y, x)."""
    return [net.to(device).eval() for net in networks]


def weights_digest(net: nn.Module) -> str:
    """sha256 over the module's class name and every state-dict entry (name, dtype, shape, bytes)."""
    digest = hashlib.sha256(type(net).__qualname__.encode("utf-8"))
    for name, tensor in sorted(net.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode("utf-8"))
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return "weights:" + digest.hexdigest()
