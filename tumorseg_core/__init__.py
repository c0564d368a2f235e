"""TumorSeg engine: tumor segmentation for 3D medical images, with no Slicer dependency.

The one entry point most users need is :func:`segment`::

    import tumorseg_core
    labels = tumorseg_core.segment(["t1.nii.gz"], model="default", device="auto")

Heavy dependencies (torch, MONAI) are imported only when a model runs, so the Slicer
UI process can import this package to read manifests and make phantoms cheaply.
"""

from __future__ import annotations

from typing import Any

from tumorseg_core.errors import CancelledError, InputError, ModelPackageError, TumorSegError

__version__ = "0.1.0"

__all__ = [
    "CancelledError",
    "InputError",
    "ModelPackageError",
    "TumorSegError",
    "__version__",
    "segment",
]


def segment(images: Any, model: str = "default", device: str = "auto", **options: Any):
    """Segment tumors in one case; see :func:`tumorseg_core.inference.segmenter.segment`."""
    from tumorseg_core.inference.segmenter import segment as _segment

    return _segment(images, model=model, device=device, **options)
