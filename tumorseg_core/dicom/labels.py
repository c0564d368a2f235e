"""The one reader of "a label map file or a DICOM SEG": label map plus what each label value means.

:func:`read_label_file` looks at the file: a DICOM Segmentation (its SOP class, whatever the
extension) goes to :func:`tumorseg_core.dicom.seg_read.read_dicom_seg`; any other file is
read by SimpleITK as a label map (``.seg.nrrd``, ``.nrrd``, ``.nii.gz``, ``.nii``, ``.mha``),
with the segments a Slicer ``.seg.nrrd`` header describes (name, color, terminology from its
``TerminologyEntry`` tag). With a reference, the label map is put on the reference's grid
(nearest neighbour; unchanged voxels where the grids already coincide).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.dicom.seg_read import is_dicom_seg, read_dicom_seg
from tumorseg_core.dicom.series import DicomSeries
from tumorseg_core.errors import InputError
from tumorseg_core.imaging.geometry import same_grid
from tumorseg_core.imaging.segments import SegmentInfo, auto_color

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


def read_label_file(
    path: PathLike, reference: Union[sitk.Image, DicomSeries, None] = None
) -> tuple[sitk.Image, list[SegmentInfo]]:
    """Read a label map file or a DICOM SEG as ``(label map, segments)``.

    The label map is a 3D integer ``SimpleITK.Image`` (0 = background); ``segments`` are
    the descriptions the file holds (DICOM SEG: every segment; ``.seg.nrrd``: its header's
    segments; other formats: ``[]``). ``reference`` (an image or a ``DicomSeries``) puts the
    result on its grid; a DICOM SEG of another series than the reference's is refused.
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
    segments = segments_of_header(labels)
    for key in list(labels.GetMetaDataKeys()):
        labels.EraseMetaData(key)
    target = reference.image if isinstance(reference, DicomSeries) else reference
    if target is not None and not same_grid(labels, target):
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
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0
        image = sitk.Extract(image, size, [0, 0, 0, 0])
    if image.GetNumberOfComponentsPerPixel() > 1 or image.GetDimension() != 3:
        raise InputError(f"{p.name} is not one 3D label map (overlapping segments or layers?); "
                         "export it as a single labelmap")
    array = sitk.GetArrayViewFromImage(image)
    if array.size and (array.min() < 0 or not np.all(np.mod(array, 1) == 0)):
        raise InputError(f"{p.name} has negative or fractional values; give a label map of whole numbers")
    if array.dtype.kind == "f":
        image = sitk.Cast(image, sitk.sitkUInt16 if array.size and array.max() > 255 else sitk.sitkUInt8)
    return image


def _terminology(tags: str) -> Optional[dict]:
    """``{category, type, modifier?}`` from a Slicer ``Segment{i}_Tags`` value's TerminologyEntry, else None."""
    for tag in tags.split("|"):
        if tag.startswith("TerminologyEntry:"):
            fields = tag[len("TerminologyEntry:"):].split("~")
            if len(fields) < 3:
                return None
            codes = [f.split("^") for f in fields[1:4]]
            if any(len(c) != 3 for c in codes) or not all(codes[0][:2]) or not all(codes[1][:2]):
                return None
            out = {"category": codes[0], "type": codes[1]}
            if len(codes) > 2 and all(codes[2][:2]):
                out["modifier"] = codes[2]
            return out
    return None


def segments_of_header(labels: sitk.Image) -> list[SegmentInfo]:
    """The segments a Slicer ``.seg.nrrd`` header describes (``Segment{i}_*`` metadata); [] if none."""
    keys = set(labels.GetMetaDataKeys())

    def get(i: int, field: str) -> Optional[str]:
        key = f"Segment{i}_{field}"
        return labels.GetMetaData(key).strip() if key in keys else None

    infos: list[SegmentInfo] = []
    i = 0
    while get(i, "ID") is not None or get(i, "Name") is not None:
        try:
            value = int(get(i, "LabelValue") or i + 1)
        except ValueError:
            value = i + 1
        color = auto_color(value)
        try:
            parsed = tuple(float(c) for c in (get(i, "Color") or "").split())
            if len(parsed) == 3 and all(0.0 <= c <= 1.0 for c in parsed):
                color = parsed
        except ValueError:
            pass
        name = get(i, "Name") or f"Segment_{value}"
        infos.append(SegmentInfo(value, name, color, _terminology(get(i, "Tags") or "")))  # type: ignore[arg-type]
        i += 1
    return infos
