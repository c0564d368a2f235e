"""Write a label map as a DICOM Segmentation object (BINARY) against the source series' instances.

The label map came from segmenting a DICOM series, so it lies on that series' grid: its
slice ``z = k`` is the source instance ``k`` (see :mod:`tumorseg_core.dicom.series`). The
SEG is written frame by frame against the source instances: highdicom takes each frame's
ImagePositionPatient, the orientation and the pixel spacing from the source instance it
derives from, and references that instance (per-frame Derivation Image / Source Image
Sequences, plus the Referenced Series Sequence). So the geometry is the source's own,
also for oblique and gantry-tilted series (whose SimpleITK volume drops the shear).

Choices:

- the segments are those of a ``.seg.nrrd`` (``io.write_labelmap``): every described
  segment, present or not, plus an automatic ``Segment_<value>`` (category/type Tissue) for
  each undescribed label value present; numbered 1..N in increasing label value. When the
  values are not 1..N (e.g. {1, 3}), reading the SEG back gives 1..N (logged as a warning).
- empty frames are omitted (highdicom's default), so a segment with no voxel has no frame
  (dciodvfy, dcmqi and highdicom accept it). An all-zero label map with described segments
  ("nothing found") is written too: highdicom then keeps every frame, all zero. Only an
  all-zero label map without any segment description is refused (a SEG needs a segment).
- Algorithm Type AUTOMATIC (``algorithm_type`` may say SEMIAUTOMATIC or MANUAL) with the
  algorithm's name and version, family "Artificial Intelligence" (DCM 123110).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.dicom import codes
from tumorseg_core.dicom.series import DicomSeries, read_dicom_series
from tumorseg_core.errors import InputError, TumorSegError
from tumorseg_core.imaging import io
from tumorseg_core.imaging.geometry import same_grid
from tumorseg_core.imaging.segments import SegmentInfo, complete_segments

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Tolerance (mm, and direction cosine) for "the labels are on the source grid".
GRID_TOLERANCE = 1e-3
MANUFACTURER = "TumorSeg"
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")


def check_seg_output_path(path: PathLike) -> Path:
    """Refuse a DICOM SEG output path before any work is done: a ``.dcm`` file that can be written."""
    out = Path(path)
    if not out.name.lower().endswith(".dcm"):
        raise TumorSegError(f"cannot write {out.name} as DICOM SEG: give a file name ending in .dcm")
    return io.check_writable_file(out, (".dcm",))[0]


def _label_values(array: np.ndarray) -> list[int]:
    if array.size and (array.min() < 0 or not np.all(np.mod(array, 1) == 0)):
        raise InputError("labels must be whole numbers >= 0 to write a DICOM SEG; check the label map")
    return [int(v) for v in np.unique(array) if v]


def write_dicom_seg(
    labels: sitk.Image,
    source_folder: Union[PathLike, DicomSeries],
    out_path: PathLike,
    segments: Sequence[SegmentInfo] = (),
    algorithm_name: str = "TumorSeg",
    algorithm_version: str = "",
    algorithm_type: str = "AUTOMATIC",
    series_description: Optional[str] = None,
) -> Path:
    """Write ``labels`` as a BINARY DICOM SEG of the series in ``source_folder``; returns ``out_path``.

    ``labels`` is a 3D integer label map (0 = background) on the source series' exact grid
    (the grid :func:`tumorseg_core.imaging.io.read_image` gives for that folder);
    ``source_folder`` is the series folder (the largest series in it is used, like
    ``read_image``) or an already read :class:`DicomSeries`. ``segments`` describe the label
    values (name, color, SNOMED terminology), e.g. a model manifest's segments or
    ``SEEDED_TUMOR``. The file is written atomically (temp file, then rename).

    Raises InputError when the labels are not on the source grid or not whole numbers, or
    are all zero with no ``segments`` to describe, or highdicom refuses the source headers;
    TumorSegError when ``out_path`` is not a writable ``.dcm`` path or the write fails. No
    file is left at ``out_path`` then.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes as sr_codes

    out = check_seg_output_path(out_path)
    if algorithm_type not in ALGORITHM_TYPES:
        raise TumorSegError(f"algorithm type {algorithm_type!r} is unknown; use one of {', '.join(ALGORITHM_TYPES)}")
    if not isinstance(labels, sitk.Image) or labels.GetDimension() != 3 or labels.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("labels must be a 3D scalar SimpleITK label map to write a DICOM SEG")
    series = source_folder if isinstance(source_folder, DicomSeries) else read_dicom_series(source_folder)
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in series.datasets):
        raise InputError("the source series is multi-frame; DICOM SEG output needs a series of single-frame images")
    if not same_grid(labels, series.image, tol=GRID_TOLERANCE):
        raise InputError(
            f"the labels (size {labels.GetSize()}, spacing {_fmt(labels.GetSpacing())}) are not on the grid of the "
            f"source DICOM series (size {series.image.GetSize()}, spacing {_fmt(series.image.GetSpacing())}); "
            "give the label map made from that series"
        )
    array = sitk.GetArrayFromImage(labels)  # (z, y, x): z is the source instance index
    present = _label_values(array)
    infos = {s.value: s for s in complete_segments(present, list(segments)) if s.value > 0}
    values = sorted(infos)
    if not values:
        raise InputError("the label map is empty (every voxel is 0) and no segments are described; "
                         "give the segments (e.g. the model's) to write an empty DICOM SEG")
    if values != list(range(1, len(values) + 1)):
        logger.warning("label values %s are written as DICOM segment numbers 1..%d", values, len(values))
    numbers = np.zeros(max(values) + 1, dtype=np.uint16)
    numbers[values] = np.arange(1, len(values) + 1)
    pixel_array = numbers[array.astype(np.int64)]
    dtype = np.uint8 if len(values) < 256 else np.uint16
    try:
        algorithm = hd.AlgorithmIdentificationSequence(
            name=algorithm_name[:64], family=sr_codes.cid7162.ArtificialIntelligence,
            version=algorithm_version[:64] or "0",
        )
        descriptions = [
            codes.segment_description(i + 1, infos[v], algorithm if algorithm_type != "MANUAL" else None,
                                      algorithm_type)
            for i, v in enumerate(values)
        ]
        seg = _segmentation(hd, series, pixel_array.astype(dtype), descriptions, algorithm_name, algorithm_version)
    except (ValueError, TypeError, AttributeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"could not build a DICOM SEG ({reason}); check the source series' headers and the "
                         "segment names") from exc
    seg.SeriesDescription = (series_description or f"{algorithm_name} segmentation")[:64]
    seg.ContentCreatorName = ""  # type 2 in the Content Identification Macro: present, empty
    io.atomic_write(out, ".dcm", lambda tmp: seg.save_as(tmp, enforce_file_format=True))
    logger.info("wrote DICOM SEG %s (%d segments, %d frames)", out, len(values), int(seg.NumberOfFrames))
    return out


def _segmentation(hd: Any, series: DicomSeries, pixel_array: np.ndarray, descriptions: list, algorithm_name: str,
                  algorithm_version: str) -> Any:
    """highdicom's BINARY Segmentation: frame k of ``pixel_array`` (z, y, x; segment numbers) on instance k."""
    return hd.seg.Segmentation(
        source_images=list(series.datasets),
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=_series_number(series),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm_name[:64],
        software_versions=algorithm_version[:64] or "0",
        device_serial_number="0",
        content_label="TUMORSEG",
        content_description=f"{algorithm_name} segmentation"[:64],
    )


def _series_number(series: DicomSeries) -> int:
    """The source's SeriesNumber + 1000 (a distinct series of the same study), else 1000."""
    number = series.datasets[0].get("SeriesNumber")
    try:
        return int(number) + 1000 if number not in (None, "") else 1000
    except (TypeError, ValueError):
        return 1000


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
