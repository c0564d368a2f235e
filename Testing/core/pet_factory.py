"""Build small PET DICOM series in tests with pydicom: SUV headers the test chooses, one file per slice.

``write_pet_series(folder, activity_zyx, spacing, origin, direction, headers)`` stores
``activity_zyx`` (Bq/mL, (z, y, x)) as int16 pixels with a different ``RescaleSlope`` per
slice (as scanners do), so a reader must apply each slice's slope. ``headers`` holds the
SUV fields (:data:`SUV_HEADERS` by default); a field set to ``None`` is left out, which is
how tests make a header go missing. Returns the file paths in slice order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

#: A plausible FDG study: 75 kg, 370 MBq injected at 09:00, the series starts at 10:00.
SUV_HEADERS: dict[str, Any] = {
    "Units": "BQML",
    "DecayCorrection": "START",
    "PatientWeight": "75",
    "RadionuclideTotalDose": "370000000",
    "RadionuclideHalfLife": "6586.2",
    "RadiopharmaceuticalStartDateTime": "20240517090000.000000",
    "RadiopharmaceuticalStartTime": None,
    "SeriesDate": "20240517",
    "SeriesTime": "100000",
    "AcquisitionDate": "20240517",
    "AcquisitionTime": "100000",
}
_RADIOPHARMACEUTICAL = ("RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartDateTime",
                        "RadiopharmaceuticalStartTime")


def _ds(value: float) -> str:
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.8e}"


def write_pet_series(folder: Path, activity_zyx: np.ndarray, spacing: Sequence[float], origin: Sequence[float],
                     direction: Optional[Sequence[float]] = None, headers: Optional[dict[str, Any]] = None,
                     acquisition_times: Optional[Sequence[str]] = None, with_sequence: bool = True) -> list[Path]:
    """Write ``activity_zyx`` as a PET series in ``folder``; ``acquisition_times`` (one per slice) override
    ``AcquisitionTime``; ``with_sequence=False`` leaves out RadiopharmaceuticalInformationSequence. The stored
    pixels round to the slope, so compare with the read image, not the input."""
    fields = dict(SUV_HEADERS if headers is None else headers)
    folder.mkdir(parents=True, exist_ok=True)
    matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    series_uid, frame_uid, study_uid = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k in range(activity_zyx.shape[0]):
        plane = activity_zyx[k].astype(np.float64)
        slope = max(float(np.abs(plane).max()) / 30000.0, 1e-6) * (1.0 + 0.1 * k)
        stored = np.round(plane / slope).astype("<i2")
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = PositronEmissionTomographyImageStorage
        ds.SOPInstanceUID = sop
        ds.Modality = "PT"
        ds.PatientName = "Test^PET"
        ds.PatientID = "PET0001"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyDate = "20240517"
        ds.InstanceNumber = k + 1
        position = np.asarray(origin, float) + k * spacing[2] * matrix[:, 2]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*matrix[:, 0], *matrix[:, 1])]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
        ds.SliceThickness = _ds(spacing[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = _ds(slope)
        info = Dataset()
        for key, value in fields.items():
            if value is None:
                continue
            if key in _RADIOPHARMACEUTICAL:
                setattr(info, key, value)
            elif key == "AcquisitionTime" and acquisition_times is not None:
                continue
            else:
                setattr(ds, key, value)
        if acquisition_times is not None:
            ds.AcquisitionTime = acquisition_times[k]
        if with_sequence:
            ds.RadiopharmaceuticalInformationSequence = [info]
        ds.PixelData = stored.tobytes()
        path = folder / f"pet_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files
