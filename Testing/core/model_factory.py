"""Tiny model packages for tests: real packages (write_package) with small random networks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from tumorseg_core.modelpkg.package import write_package
from tumorseg_core.models.registry import build_network


def tiny_manifest(modalities: Sequence[str] = ("MRI",), spacing=(2.0, 2.0, 2.0), patch=(16, 16, 16),
                  orientation: Optional[str] = "LPS", postprocessing=None) -> dict:
    return {
        "format_version": 1,
        "name": "tiny-test-model",
        "version": "0.0.1",
        "license": "Apache-2.0",
        "description": "random tiny unet3d for tests",
        "architecture": "unet3d",
        "kwargs": {"in_channels": len(modalities), "out_channels": 2, "features": [2, 4], "norm": "none"},
        "inputs": [{"modality": m, "normalization": {"type": "zscore", "nonzero": False}} for m in modalities],
        "spacing": list(spacing),
        "orientation": orientation,
        "patch_size": list(patch),
        "output": {"type": "softmax", "labels": [
            {"value": 1, "name": "Tumor", "color": [0.9, 0.3, 0.2],
             "terminology": {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                             "type": ["SCT", "108369006", "Neoplasm"]}}]},
        "postprocessing": postprocessing or [],
        "files": {},
    }


def make_tiny_package(folder: Path, modalities: Sequence[str] = ("MRI",), seed: int = 0, **manifest_options) -> Path:
    """Write a package with a random 2-level unet3d and return its folder."""
    manifest = tiny_manifest(modalities, **manifest_options)
    torch.manual_seed(seed)
    network = build_network(manifest["architecture"], manifest["kwargs"])
    state = {k: v.detach().clone().contiguous() for k, v in network.state_dict().items()}
    return write_package(folder, manifest, [state])


def make_tiny_25d_package(folder: Path, spacing=(2.0, 2.0, 2.0), postprocessing=None, seed: int = 3) -> Path:
    """Write a package with a random tiny ``unet25d`` (context 1, 32 x 32 tiles) and return its folder."""
    manifest = tiny_manifest(spacing=spacing, patch=(32, 32, 4), postprocessing=postprocessing)
    manifest.update(architecture="unet25d", description="random tiny unet25d for tests")
    manifest["kwargs"] = {"in_channels": 1, "out_channels": 2, "context": 1, "features": [4, 4, 8, 8, 8, 4]}
    torch.manual_seed(seed)
    network = build_network("unet25d", manifest["kwargs"])
    state = {k: v.detach().clone().contiguous() for k, v in network.state_dict().items()}
    return write_package(folder, manifest, [state])


def tampered_bytes(path: Path) -> bytes:
    """``path``'s bytes with one byte near the end flipped (a tampered or corrupted file)."""
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    return bytes(data)


def tampered_copy(package: Path, dest: Path, name: str) -> bytes:
    """Copy ``package`` to ``dest`` with file ``name`` tampered (:func:`tampered_bytes`); returns the bad bytes."""
    import shutil

    shutil.copytree(package, dest)
    data = tampered_bytes(dest / name)
    (dest / name).write_bytes(data)
    return data
