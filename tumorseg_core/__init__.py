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
from tumorseg_core.options import SegmentOptions

__version__ = "0.1.0"

__all__ = [
    "CancelledError",
    "InputError",
    "ModelPackageError",
    "SegmentOptions",
    "TumorSegError",
    "__version__",
    "import_model",
    "measure",
    "segment",
]


def segment(images: Any, model: str = "default", device: str = "auto", uncertainty: bool = False, **options: Any):
    """Segment tumors in one case; see :func:`tumorseg_core.inference.segmenter.segment`.

    Returns the label map, or with ``uncertainty=True`` a ``SegmentResult``
    ``(labels, uncertainty)`` (both on the first image's exact grid).
    """
    from tumorseg_core.inference.segmenter import segment as _segment

    return _segment(images, model=model, device=device, uncertainty=uncertainty, **options)


def import_model(source: Any, out_dir: Any = None, install: bool = False, **fields: Any):
    """Import a pretrained model as a TumorSeg package and return its folder;
    see :func:`tumorseg_core.modelpkg.convert.import_model`."""
    from tumorseg_core.modelpkg.convert import import_model as _import_model

    return _import_model(source, out_dir=out_dir, install=install, **fields)


def measure(labels: Any, image: Any = None, pet: Any = None, suv_factor: Any = None, segments: Any = None):
    """Measure every lesion of a label map (volume, RECIST, 3D diameter, shape, intensity, PET SUV);
    see :func:`tumorseg_core.measurement.compute.measure`."""
    from tumorseg_core.measurement.compute import measure as _measure

    return _measure(labels, image=image, pet=pet, suv_factor=suv_factor, segments=segments)
