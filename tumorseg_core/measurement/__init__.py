"""Tumor measurements: per lesion volume, RECIST 1.1 diameters, 3D diameter, surface, intensity and PET SUV.

This sub-package owns what a label map measures in physical space (LPS mm): connected
lesions per segment label (:mod:`.lesions`), their diameters (:mod:`.diameters`), surface
and sphericity (:mod:`.surface`), intensity statistics (:mod:`.intensity`), PET SUV
metrics (:mod:`.pet`) with the SUV factor read from DICOM headers (:mod:`.suv`), the table
of results (:mod:`.table`) and its picture (:mod:`.picture`). :func:`measure` is the one
call (:mod:`.compute`).

May import: ``tumorseg_core.errors``, ``tumorseg_core.imaging`` and ``tumorseg_core.dicom``;
never torch or MONAI (Slicer's UI process imports it). Heavy helpers (scikit-image,
pydicom, Pillow) are imported inside the functions that need them.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "LesionMeasurement",
    "MeasurementTable",
    "measure",
    "measure_to_file",
    "pet_suv_factor_from_dicom",
]


def __getattr__(name: str) -> Any:
    # Lazy exports: importing the package stays cheap.
    if name in ("measure", "measure_to_file"):
        from tumorseg_core.measurement import compute

        return getattr(compute, name)
    if name in ("LesionMeasurement", "MeasurementTable"):
        from tumorseg_core.measurement import table

        return getattr(table, name)
    if name == "pet_suv_factor_from_dicom":
        from tumorseg_core.measurement import suv

        return suv.pet_suv_factor_from_dicom
    raise AttributeError(f"module 'tumorseg_core.measurement' has no attribute {name!r}")
