"""Read a DICOM Segmentation object (SEG) into a label map with the segments' names, colors and codes.

The label value of a segment is its DICOM segment number (1..N). Where segments overlap
(allowed in BINARY and FRACTIONAL SEGs), the segment with the higher number wins and a
warning gives the number of voxels concerned. FRACTIONAL segments count where their value
is >= 0.5. LABELMAP SEGs (Label Map Segmentation Storage) are read the same way.

Where the label map lies:

- ``reference`` is a :class:`~tumorseg_core.dicom.series.DicomSeries`: each frame goes to
  the slice of the source instance it references (exact, also for gantry-tilted series,
  whose SimpleITK volume drops the shear); a SEG whose frames reference no instance of that
  series is placed physically as below.
- ``reference`` is a ``SimpleITK.Image``: the SEG's own volume (highdicom's, from the frame
  positions; missing empty frames are zero) is resampled with nearest neighbour onto the
  reference grid. Where the grids coincide, as for a SEG made from the series the reference
  was read from, this copies voxels exactly.
- no reference: the SEG's own volume (it spans the non-empty frames only).

A SEG that references another series than the reference's (a ``DicomSeries``, or an image
from :func:`~tumorseg_core.dicom.series.read_dicom_series` that carries its
SeriesInstanceUID) is refused with an InputError.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.dicom import codes
from tumorseg_core.dicom.series import DicomSeries, series_uid_of
from tumorseg_core.errors import InputError
from tumorseg_core.imaging.segments import SegmentInfo

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
#: The SOP classes read as DICOM SEG (BINARY/FRACTIONAL, and LABELMAP).
SEG_SOP_CLASSES = frozenset({SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE})


def is_dicom_seg(path: PathLike) -> bool:
    """True if ``path`` is a DICOM file of a Segmentation SOP class (:data:`SEG_SOP_CLASSES`; header only)."""
    import pydicom

    p = Path(path)
    if not p.is_file():
        return False
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
        return False
    return str(ds.get("SOPClassUID", "")) in SEG_SOP_CLASSES


def _read(path: Path) -> Any:
    import highdicom as hd
    import pydicom

    if not path.is_file():
        raise InputError(f"{path} does not exist; check the path of the DICOM SEG")
    try:
        return hd.seg.segread(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"could not read {path} as a DICOM SEG ({reason}); give a DICOM Segmentation file") from exc


def _referenced_series(seg: Any) -> set[str]:
    return {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", ())}


def _combine(masks: np.ndarray, numbers: list[int], path: Path) -> np.ndarray:
    """(..., n_segments) masks -> label array (...), higher segment numbers winning overlaps."""
    if masks.dtype.kind == "f":
        masks = masks >= 0.5
    masks = masks.astype(bool)
    overlap = int(np.count_nonzero(masks.sum(axis=-1) > 1))
    if overlap:
        logger.warning("%s: segments overlap in %d voxels; the higher segment number is kept there", path, overlap)
    out = np.zeros(masks.shape[:-1], dtype=np.uint8 if max(numbers, default=0) < 256 else np.uint16)
    for i, number in enumerate(numbers):
        out[masks[..., i]] = number
    return out


def _by_source_instance(seg: Any, series: DicomSeries, numbers: list[int], path: Path) -> Optional[sitk.Image]:
    """The label map on ``series.image`` placed by referenced SOP instance, or None if no frame references it."""
    uids = series.sop_instance_uids
    referenced = {str(u[2]) for u in seg.get_source_image_uids()}
    if not referenced & set(uids):
        return None
    size = series.image.GetSize()
    if (int(seg.Rows), int(seg.Columns)) != (size[1], size[0]):
        return None
    masks = seg.get_pixels_by_source_instance(
        uids, segment_numbers=numbers, assert_missing_frames_are_empty=True, skip_overlap_checks=True,
    )  # (z, y, x, segment)
    image = sitk.GetImageFromArray(_combine(masks, numbers, path))
    image.CopyInformation(series.image)
    return image


def _own_volume(seg: Any, numbers: list[int], path: Path) -> sitk.Image:
    """The SEG's own regularly spaced volume (highdicom's geometry) as a label image."""
    try:
        volume = seg.get_volume(segment_numbers=numbers, combine_segments=False, skip_overlap_checks=True)
    except (RuntimeError, ValueError) as exc:
        raise InputError(
            f"the frames of {path} do not form a regular volume ({exc}); "
            "give the source series (read_dicom_series) as the reference"
        ) from exc
    affine = np.asarray(volume.affine, dtype=float)  # (slice, row, column) index -> LPS
    axes = affine[:3, [2, 1, 0]]  # SimpleITK x = column, y = row, z = slice
    spacing = np.linalg.norm(axes, axis=0)
    image = sitk.GetImageFromArray(_combine(np.asarray(volume.array), numbers, path))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    image.SetDirection([float(v) for v in (axes / spacing).ravel()])
    return image


def read_dicom_seg(
    path: PathLike, reference: Union[sitk.Image, DicomSeries, None] = None
) -> tuple[sitk.Image, list[SegmentInfo]]:
    """Read a DICOM SEG as ``(label map, segments)``.

    The label map is a 3D ``SimpleITK.Image`` (uint8, or uint16 beyond 255 segments) whose
    value ``n`` is segment number ``n``; ``segments`` give each number's name, color and
    SNOMED terminology. With ``reference`` (an image, or a ``DicomSeries`` from
    :func:`~tumorseg_core.dicom.series.read_dicom_series`) the label map is on its exact grid.
    Raises InputError when the file is no readable SEG, references another series than the
    reference, or its frames form no regular volume and no source series is given.
    """
    p = Path(path)
    seg = _read(p)
    if str(seg.SOPClassUID) not in SEG_SOP_CLASSES:
        raise InputError(f"{p} is not a DICOM Segmentation (SOP class {seg.SOPClassUID}); give a DICOM SEG file")
    numbers = [int(n) for n in seg.segment_numbers]
    infos = [codes.segment_info(seg.get_segment_description(n), n) for n in numbers]
    series = reference if isinstance(reference, DicomSeries) else None
    ref_image = series.image if series is not None else reference
    ref_uid = series.series_uid if series is not None else (series_uid_of(reference) if reference is not None else None)
    referenced = _referenced_series(seg)
    if ref_uid and referenced and ref_uid not in referenced:
        raise InputError(
            f"{p.name} segments series {', '.join(sorted(referenced))}, not the reference series {ref_uid}; "
            "give the DICOM SEG made from that series"
        )
    labels = _by_source_instance(seg, series, numbers, p) if series is not None else None
    if labels is None:
        labels = _own_volume(seg, numbers, p)
        if ref_image is not None:
            labels = sitk.Resample(labels, ref_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                   labels.GetPixelID())
    logger.info("read DICOM SEG %s: %d segments", p, len(infos))
    return labels, infos
