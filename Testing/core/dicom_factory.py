"""Build small DICOM CT series in tests with pydicom (no files from outside the test).

``write_ct_series(folder, array_zyx, spacing, origin, direction, shear_y=0.0, ...)`` writes
one CT Image Storage instance per slice with the patient, study, series, frame of reference,
equipment, image plane, image pixel, CT image and SOP common modules a scanner would write.
``direction`` is a row-major 3x3 (like SimpleITK's): its columns are the LPS directions of
the x (row), y (column) and slice axes. Slice ``k`` sits at ``origin + k * spacing[2] *
normal``; ``shear_y`` (mm per slice) adds ``k * shear_y`` along the column direction, which
is how a gantry-tilted series looks (positions sheared, orientation unchanged).
Returns a :class:`Series` with the UIDs written and the file paths (slice order).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass
class Series:
    """UIDs and files of a written series (``files`` in slice order k = 0, 1, ...)."""

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _ds_float(value: float) -> str:
    """A decimal string (DS, at most 16 characters) for ``value``."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6f}"[:16]


def write_ct_series(
    folder: Path,
    array_zyx: np.ndarray,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: Optional[Sequence[float]] = None,
    shear_y: float = 0.0,
    study_uid: Optional[str] = None,
    series_uid: Optional[str] = None,
    frame_of_reference_uid: Optional[str] = None,
    prefix: str = "ct",
    reverse_files: bool = True,
) -> Series:
    """Write ``array_zyx`` (z, y, x; int16 values) as a CT series in ``folder``, one file per slice.

    File names run against the slice order when ``reverse_files`` (so a reader must sort by
    position, not by name).
    """
    folder.mkdir(parents=True, exist_ok=True)
    matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    row_dir, col_dir, normal = matrix[:, 0], matrix[:, 1], matrix[:, 2]
    series = Series(
        study_uid=study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        frame_of_reference_uid=frame_of_reference_uid or generate_uid(),
    )
    nz, ny, nx = array_zyx.shape
    now = datetime.datetime(2024, 5, 17, 10, 30, 0)
    for k in range(nz):
        position = np.asarray(origin, float) + k * spacing[2] * normal + k * shear_y * col_dir
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.InstanceCreationDate = now.strftime("%Y%m%d")
        ds.InstanceCreationTime = now.strftime("%H%M%S")
        ds.PatientName = "Test^Phantom"
        ds.PatientID = "TS0001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = series.study_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = now.strftime("%H%M%S")
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.AccessionNumber = "A1"
        ds.StudyDescription = "TumorSeg test"
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series.series_uid
        ds.SeriesNumber = 3
        ds.SeriesDescription = prefix
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = series.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "TumorSeg tests"
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionNumber = 1
        ds.PixelSpacing = [_ds_float(spacing[1]), _ds_float(spacing[0])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = _ds_float(spacing[2])
        ds.ImageOrientationPatient = [_ds_float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [_ds_float(v) for v in position]
        ds.SliceLocation = _ds_float(float(np.dot(position, normal)))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.KVP = "120"
        ds.PixelData = np.ascontiguousarray(array_zyx[k].astype("<i2")).tobytes()
        name = folder / f"{prefix}_{(nz - 1 - k) if reverse_files else k:03d}.dcm"
        ds.save_as(name, enforce_file_format=True)
        series.sop_instance_uids.append(sop_uid)
        series.files.append(name)
    return series
