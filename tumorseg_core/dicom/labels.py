"""The one reader of "a label map file or a DICOM SEG": label map plus what each label value means.

:func:`read_label_file` looks at the file: a DICOM Segmentation (its SOP class, whatever the
extension) goes to :func:`tumorseg_core.dicom.seg_read.read_dicom_seg`; any other file is
read by SimpleITK as a label map (``.seg.nrrd``, ``.nrrd``, ``.nii.gz``, ``.nii``, ``.mha``),
with the segments a Slicer ``.seg.nrrd`` header describes
(:func:`tumorseg_core.imaging.seg_nrrd.header_segments`: name, color, terminology). With a
reference, the label map is put on the reference's grid (nearest neighbour; unchanged voxels
where the grids already coincide), unless ``resample=False`` (then only a DICOM SEG, whose
frames need a grid, uses it). ``tumorseg evaluate``, ``tumorseg measure`` and the DICOM SEG
tools all read label files here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.dicom.seg_read import is_dicom_seg, read_dicom_seg
from tumorseg_core.dicom.series import DicomSeries
from tumorseg_core.errors import InputError
from tumorseg_core.imaging.geometry import same_grid
from tumorseg_core.imaging.seg_nrrd import header_segments
from tumorseg_core.imaging.segments import SegmentInfo

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


def read_label_file(
    path: PathLike, reference: Union[sitk.Image, DicomSeries, None] = None, *, resample: bool = True,
) -> tuple[sitk.Image, list[SegmentInfo]]:
    """Read a label map file or a DICOM SEG as ``(label map, segments)``.

    The label map is a 3D integer ``SimpleITK.Image`` (0 = background); ``segments`` are
    the descriptions the file holds (DICOM SEG: every segment; ``.seg.nrrd``: its header's
    segments; other formats: ``[]``). ``reference`` (an image or a ``DicomSeries``) puts the
    result on its grid (with ``resample=False`` only a DICOM SEG's; another label map keeps its
    own grid for the caller to check); a DICOM SEG of another series than the reference's is refused.
    Raises InputError for a missing, unreadable or non-label-map file.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"label file {p} does not exist; check the path")
    if not p.is_file():
        raise InputError(f"{p} is not a file; give a label map file or a DICOM SEG file")
    if is_dicom_seg(p):
        return read_dicom_seg(p, reference)
    if p.name.lower().endswith(".dcm"):
        raise InputError(f"{p} is not a DICOM Segmentation; give a DICOM SEG or a label map file")
    labels = _read_labelmap(p)
    segments = header_segments(labels)
    for key in list(labels.GetMetaDataKeys()):
        labels.EraseMetaData(key)
    target = reference.image if isinstance(reference, DicomSeries) else reference
    if resample and target is not None and not same_grid(labels, target):
        logger.info("%s is not on the reference grid; resampling it (nearest neighbour)", p)
        labels = sitk.Resample(labels, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return labels, segments


def _read_labelmap(p: Path) -> sitk.Image:
    """A 3D scalar label map of whole numbers >= 0 from ``p`` (header kept), else InputError."""
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[-160:] or type(exc).__name__
        raise InputError(f"could not read label map {p} ({reason}); give a NIfTI, NRRD, MHA or DICOM SEG file") from exc
    header = {key: image.GetMetaData(key) for key in image.GetMetaDataKeys()}
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:  # one volume: 3D
        size = list(image.GetSize())
        size[3] = 0
        image = sitk.Extract(image, size, [0, 0, 0, 0])
    if image.GetNumberOfComponentsPerPixel() > 1 or image.GetDimension() != 3:
        raise InputError(f"{p.name} is not one 3D label map (overlapping segments or layers?); "
                         "export it as a single labelmap")
    array = sitk.GetArrayViewFromImage(image)
    if array.size and not np.all(np.mod(array, 1) == 0):
        raise InputError(f"{p.name} holds non-integer values; give a label map of whole numbers, not probabilities")
    if array.size and array.min() < 0:
        raise InputError(f"{p.name} has negative values; give a label map of whole numbers (0 = background)")
    if array.dtype.kind == "f":
        image = sitk.Cast(image, sitk.sitkUInt16 if array.size and array.max() > 255 else sitk.sitkUInt8)
    for key, value in header.items():  # filters drop the header; the segments are described there
        image.SetMetaData(key, value)
    return image
