"""The PET input of a measurement: the image and its SUV factor, from a SimpleITK image or a path.

- a ``SimpleITK.Image``: ``suv_factor`` is required (there are no headers to read);
- a DICOM folder, or one DICOM file of the series: the series is read (``RescaleSlope``
  applied per slice by the reader) and, unless ``suv_factor`` is given, the factor comes
  from the headers (:func:`tumorseg_core.measurement.suv.pet_suv_factor_from_dicom`);
- any other image file (NIfTI, NRRD, MHA): ``suv_factor`` is required.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Union

import SimpleITK as sitk

from tumorseg_core.errors import InputError
from tumorseg_core.imaging.io import check_image, read_image
from tumorseg_core.measurement.suv import pet_suv_factor_from_dicom

PetSource = Union[sitk.Image, str, "os.PathLike[str]"]


def check_suv_factor(value: Optional[float]) -> Optional[float]:
    """``value`` as a float if it is a finite number > 0 (or None); InputError otherwise."""
    if value is None:
        return None
    try:
        factor = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"SUV factor {value!r} is not a number; give a number > 0, e.g. --suv-factor 0.00012") from exc
    if not (math.isfinite(factor) and factor > 0):
        raise InputError(f"SUV factor {value!r} must be a finite number > 0; e.g. --suv-factor 0.00012")
    return factor


def _dicom_series_uid(path: Path) -> Optional[str]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    return str(header.get("SeriesInstanceUID", "")) or None


def _read_series_of(path: Path, uid: str) -> sitk.Image:
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path.parent), uid)
    if not names:
        raise InputError(f"could not find the DICOM series of {path}; give the PET DICOM folder")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"could not read the PET DICOM series of {path}; give the PET DICOM folder") from exc
    return check_image(image, name=f"PET series of {path}")


def open_pet(pet: Optional[PetSource], suv_factor: Optional[float] = None) -> tuple[Optional[sitk.Image], Optional[float]]:
    """The PET image (activity concentration) and the factor that turns it into SUV; (None, None) without PET."""
    factor = check_suv_factor(suv_factor)
    if pet is None:
        if factor is not None:
            raise InputError("an SUV factor was given without a PET image; give the PET too (--pet)")
        return None, None
    if isinstance(pet, sitk.Image):
        if factor is None:
            raise InputError("the PET image has no DICOM headers to compute SUV from; pass suv_factor=F "
                             "(--suv-factor F), or give the PET DICOM folder")
        return check_image(pet, name="PET image"), factor
    if not isinstance(pet, (str, os.PathLike)):
        raise InputError(f"pet is a {type(pet).__name__}; give a SimpleITK image or a PET DICOM folder/file")
    path = Path(pet)
    if not path.exists():
        raise InputError(f"PET {path} does not exist; check the path")
    uid = _dicom_series_uid(path) if path.is_file() else None
    if path.is_dir() or uid:
        image = read_image(path) if path.is_dir() else _read_series_of(path, uid)  # type: ignore[arg-type]
        return image, factor if factor is not None else pet_suv_factor_from_dicom(path)
    if factor is None:
        raise InputError(f"PET {path.name} is not DICOM, so there are no headers to compute SUV from; "
                         "pass --suv-factor F")
    return read_image(path), factor
