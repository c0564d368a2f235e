"""A DICOM series folder: its volume (read by SimpleITK like every door does) and its per-slice datasets.

:func:`read_dicom_series` picks a series the way :func:`tumorseg_core.imaging.io.read_image`
does (the one with the most files, searched recursively; or the one asked for), reads its
pixel data with :func:`tumorseg_core.imaging.io.read_dicom_files` and its headers with
pydicom in the same slice order, so ``datasets[k]`` is the instance of the volume's slice
``z = k``. A DICOM SEG written against these datasets is therefore on the grid of the label
maps TumorSeg makes from that folder.

Gantry-tilted series (ImagePositionPatient sheared along the column direction while the
orientation stays): SimpleITK reads them as an orthogonal volume whose slice spacing is the
distance between consecutive positions, so the shear is dropped (its image metadata holds
``ITK_non_uniform_sampling_deviation``); slice ``k`` still holds instance ``k``'s pixels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import SimpleITK as sitk

from tumorseg_core.errors import InputError
from tumorseg_core.imaging import io

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Image metadata keys (ITK's DICOM tag convention) set on the volume of a series.
STUDY_UID_KEY = "0020|000d"
SERIES_UID_KEY = "0020|000e"
FRAME_OF_REFERENCE_KEY = "0020|0052"


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series: its volume and its instances' headers in the volume's slice order.

    ``image`` is the 3D volume (SimpleITK, LPS; its array is (z, y, x) with ``z`` the
    instance index) with the study/series/frame-of-reference UIDs as metadata
    (:data:`STUDY_UID_KEY`, :data:`SERIES_UID_KEY`, :data:`FRAME_OF_REFERENCE_KEY`).
    ``datasets[k]`` (pydicom, without pixel data) and ``files[k]`` belong to slice ``z = k``.
    """

    image: sitk.Image
    datasets: tuple
    files: tuple[Path, ...]

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> Optional[str]:
        value = self.datasets[0].get("FrameOfReferenceUID")
        return str(value) if value else None

    @property
    def sop_instance_uids(self) -> list[str]:
        """SOP Instance UIDs, one per slice in z order."""
        return [str(ds.SOPInstanceUID) for ds in self.datasets]


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def series_uid_of(image: sitk.Image) -> Optional[str]:
    """The SeriesInstanceUID an image read by :func:`read_dicom_series` carries, else None."""
    return image.GetMetaData(SERIES_UID_KEY) if image.HasMetaDataKey(SERIES_UID_KEY) else None


def read_dicom_series(folder: PathLike, series_uid: Optional[str] = None) -> DicomSeries:
    """Read a DICOM series folder: volume plus per-slice datasets in the same order.

    Without ``series_uid`` the series with the most files is read (as ``io.read_image``
    does); with it, that series. Raises InputError if the folder has no (such) series, a
    file cannot be read, or the files do not form one single-frame-per-slice series.
    """
    import pydicom  # lazily: only DICOM work needs it

    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"{path} is not a folder; give the folder of the source DICOM series")
    series = io.dicom_series_files(path)
    if not series:
        raise InputError(f"{path} is a folder without a DICOM series; give the folder of the source DICOM series")
    if series_uid is not None:
        chosen = [names for sid, names in series if sid == series_uid]
        if not chosen:
            raise InputError(f"{path} has no DICOM series {series_uid}; give the folder that holds it")
        names = chosen[0]
    else:
        sid, names = series[0]
        if len(series) > 1:
            logger.info("%s holds %d DICOM series; using the largest (%s, %d files)", path, len(series), sid,
                        len(names))
    try:
        image = io.read_dicom_files(names)
        datasets = tuple(pydicom.dcmread(name, stop_before_pixels=True) for name in names)
    except (RuntimeError, OSError, pydicom.errors.InvalidDicomError) as exc:
        raise InputError(f"could not read the DICOM series in {path} ({_first_line(exc)}); check its files") from exc
    if image.GetDimension() != 3 or image.GetDepth() != len(datasets):
        raise InputError(
            f"the DICOM series in {path} has {len(datasets)} files but a volume of size {image.GetSize()}; "
            "give a series with one frame per file"
        )
    uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(uids) != 1 or "" in uids:
        raise InputError(f"the DICOM files in {path} do not share one SeriesInstanceUID; give one series")
    result = DicomSeries(image=image, datasets=datasets, files=tuple(Path(n) for n in names))
    image.SetMetaData(STUDY_UID_KEY, result.study_uid)
    image.SetMetaData(SERIES_UID_KEY, result.series_uid)
    if result.frame_of_reference_uid:
        image.SetMetaData(FRAME_OF_REFERENCE_KEY, result.frame_of_reference_uid)
    return result
