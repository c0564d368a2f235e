"""The label map to measure: check it, name its segments and put it on the measured image's grid.

Label files are read by :func:`tumorseg_core.dicom.labels.read_label_file` (the one reader).

A label map is a 3D integer ``SimpleITK.Image`` (0 = background, 1..N = segment labels).
Segment names come from a Slicer ``.seg.nrrd`` header (``Segment{i}_Name`` /
``Segment{i}_LabelValue``), from :class:`~tumorseg_core.imaging.segments.SegmentInfo`
objects, or fall back to ``label_N``. An empty label map is valid (it measures nothing).
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import InputError
from tumorseg_core.imaging.geometry import same_grid
from tumorseg_core.imaging.seg_nrrd import header_segments
from tumorseg_core.imaging.segments import SegmentInfo

logger = logging.getLogger(__name__)

def check_labelmap(labels: sitk.Image, name: str = "label map") -> sitk.Image:
    """Check ``labels`` is a 3D scalar map of whole numbers >= 0 and return it unchanged."""
    if not isinstance(labels, sitk.Image):
        raise InputError(f"{name} is a {type(labels).__name__}; give a SimpleITK.Image label map")
    if labels.GetNumberOfComponentsPerPixel() > 1 or labels.GetDimension() == 4:
        raise InputError(f"{name} holds overlapping segments (several layers); "
                         "export it from Slicer as a labelmap or a single-layer .seg.nrrd")
    if labels.GetDimension() != 3:
        raise InputError(f"{name} is {labels.GetDimension()}D; a 3D label map is needed")
    array = sitk.GetArrayViewFromImage(labels)
    if array.size and (np.issubdtype(array.dtype, np.floating) and not np.all(np.mod(array, 1) == 0)):
        raise InputError(f"{name} has fractional values; give a label map of whole numbers (0 = background)")
    if array.size and array.min() < 0:
        raise InputError(f"{name} has negative values; give a label map of whole numbers (0 = background)")
    return labels


def segments_from_header(labels: sitk.Image) -> list[SegmentInfo]:
    """The segments a Slicer ``.seg.nrrd`` header describes (``imaging.seg_nrrd.header_segments``), by value.

    Returns an empty list for an image without such a header.
    """
    return sorted(header_segments(labels), key=lambda info: int(info.value))


def segment_name(value: int, segments: Optional[Sequence[SegmentInfo]]) -> str:
    """The name of label ``value``: its SegmentInfo's name, else ``label_<value>``."""
    for info in segments or ():
        if int(info.value) == int(value):
            return info.name
    return f"label_{int(value)}"


def grid_text(image: sitk.Image) -> str:
    """A short description of an image grid for error messages: size, spacing, origin, direction."""
    def fmt(values: Sequence[float]) -> str:
        return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

    return (f"size {tuple(image.GetSize())} spacing {fmt(image.GetSpacing())} origin {fmt(image.GetOrigin())} "
            f"direction {fmt(image.GetDirection())}")


def on_image_grid(labels: sitk.Image, image: sitk.Image, image_name: str = "image") -> sitk.Image:
    """``labels`` on ``image``'s exact grid, as an image that shares its geometry.

    The same grid (within ``imaging.geometry.same_grid``'s tolerance): returned with the
    image's geometry copied. A label map on a box of the image's own voxel lattice (same
    spacing and direction, origin on an image voxel: how Slicer saves a cropped
    ``.seg.nrrd``) is pasted into an all-zero map of the image's grid; labels outside the
    image raise. Any other grid raises InputError naming both grids.
    """
    if same_grid(labels, image):
        out = sitk.Image(labels)
        out.CopyInformation(image)
        return out
    pasted = _paste_sub_grid(labels, image)
    if pasted is not None:
        logger.info("the label map covers a box of the %s's grid; measured on the %s's full grid", image_name,
                    image_name)
        return pasted
    raise InputError(f"the label map's grid [{grid_text(labels)}] differs from the {image_name}'s "
                     f"[{grid_text(image)}]; give the label map made on this {image_name}")


def _paste_sub_grid(labels: sitk.Image, image: sitk.Image, tol: float = 1e-4) -> Optional[sitk.Image]:
    """``labels`` pasted into ``image``'s grid when it lies on the same voxel lattice, else None."""
    if not (np.allclose(labels.GetSpacing(), image.GetSpacing(), rtol=0, atol=tol)
            and np.allclose(labels.GetDirection(), image.GetDirection(), rtol=0, atol=tol)):
        return None
    start = np.array(image.TransformPhysicalPointToContinuousIndex(labels.GetOrigin()))
    if not np.allclose(start, np.round(start), atol=1e-3):
        return None
    start = np.round(start).astype(int)
    size = np.array(labels.GetSize())
    array = sitk.GetArrayFromImage(labels)
    full = np.zeros(tuple(reversed(image.GetSize())), dtype=array.dtype)
    lo = np.maximum(start, 0)
    hi = np.maximum(np.minimum(start + size, image.GetSize()), lo)
    src = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo[::-1], hi[::-1], start[::-1]))
    if int(np.count_nonzero(array[src])) != int(np.count_nonzero(array)):
        raise InputError(f"the label map reaches outside the image (grid [{grid_text(labels)}] vs "
                         f"[{grid_text(image)}]); give the label map made on this image")
    full[tuple(slice(int(a), int(b)) for a, b in zip(lo[::-1], hi[::-1]))] = array[src]
    out = sitk.GetImageFromArray(full)
    out.CopyInformation(image)
    for key in labels.GetMetaDataKeys():
        out.SetMetaData(key, labels.GetMetaData(key))
    return out
