"""A tiny random 2.5D (``unet25d``) model package for the Live-mode tests (worker ``slice``, effect_live).

Untrained: the tests check plumbing and geometry (the preview equals what ``SliceSegmenter``
computes for that slice, on the exact voxels), never segmentation quality.
"""

from __future__ import annotations

from pathlib import Path

#: The model's in-plane spacing differs from the test volumes', so every slice is resampled.
SPACING_XYZ = (0.9, 0.9, 2.0)


def live_manifest() -> dict:
    return {
        "format_version": 1, "name": "live-test-25d", "version": "0.0.1", "license": "Apache-2.0",
        "description": "random tiny unet25d for the Live-mode tests",
        "architecture": "unet25d",
        "kwargs": {"in_channels": 1, "out_channels": 2, "context": 1, "features": [4, 4, 8, 8, 8, 4]},
        "inputs": [{"modality": "MRI", "normalization": {"type": "zscore", "nonzero": False}}],
        "spacing": list(SPACING_XYZ), "orientation": None, "patch_size": [32, 32, 3],
        "output": {"type": "softmax", "labels": [
            {"value": 1, "name": "Tumor", "color": [0.9, 0.3, 0.2],
             "terminology": {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                             "type": ["SCT", "108369006", "Neoplasm"]}}]},
        "postprocessing": [], "files": {},
    }


def write_live_package(folder: Path, seed: int = 3) -> Path:
    """Write the package into ``folder`` (seeded random weights); returns its path."""
    import torch

    from tumorseg_core.modelpkg.package import write_package
    from tumorseg_core.models.registry import build_network

    manifest = live_manifest()
    torch.manual_seed(seed)
    network = build_network("unet25d", manifest["kwargs"])
    state = {k: v.detach().clone().contiguous() for k, v in network.state_dict().items()}
    return write_package(folder, manifest, [state])
