"""SUV body-weight factor from PET DICOM headers (tumorseg_core/measurement/suv.py) and its use in measure()."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from pet_factory import SUV_HEADERS, write_pet_series

from tumorseg_core.errors import InputError
from tumorseg_core.measurement import measure, pet_suv_factor_from_dicom

SPACING = (2.0, 2.5, 3.0)
ORIGIN = (-20.0, 15.0, 40.0)
OBLIQUE = tuple(sitk.VersorTransform((0.2, -0.3, 1.0), 2.6).GetMatrix())  # rotated ~150 deg, tilted


def _activity(shape=(6, 10, 12), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1000.0, 20000.0, size=shape)


def _hand_factor(weight_kg: float, dose_bq: float, half_life_s: float, elapsed_s: float) -> float:
    return weight_kg * 1000.0 / (dose_bq * 0.5 ** (elapsed_s / half_life_s))


def _series(tmp_path, name="pet", **changes):
    headers = {**SUV_HEADERS, **changes}
    with_sequence = headers.pop("with_sequence", True)
    times = headers.pop("acquisition_times", None)
    folder = tmp_path / name
    files = write_pet_series(folder, _activity(), SPACING, ORIGIN, OBLIQUE, headers, times, with_sequence)
    return folder, files


def test_factor_from_a_folder_and_from_one_file_is_the_hand_computed_value(tmp_path):
    folder, files = _series(tmp_path)
    expected = _hand_factor(75.0, 370e6, 6586.2, 3600.0)  # injected 09:00, series starts 10:00
    assert pet_suv_factor_from_dicom(folder) == pytest.approx(expected, rel=1e-4)
    assert pet_suv_factor_from_dicom(files[2]) == pytest.approx(expected, rel=1e-4)


def test_start_time_without_a_date_uses_the_series_date(tmp_path):
    folder, _ = _series(tmp_path, RadiopharmaceuticalStartDateTime=None, RadiopharmaceuticalStartTime="091500.5",
                        SeriesTime="103000", AcquisitionTime="103000")
    expected = _hand_factor(75.0, 370e6, 6586.2, 4500.0 - 0.5)
    assert pet_suv_factor_from_dicom(folder) == pytest.approx(expected, rel=1e-4)


def test_an_acquisition_before_the_series_time_is_the_scan_start(tmp_path):
    # Some scanners rewrite SeriesTime after post-processing; the earliest acquisition is the real start.
    times = ["100500", "095000", "100000", "100000", "100000", "100000"]
    folder, _ = _series(tmp_path, SeriesTime="120000", acquisition_times=times)
    assert pet_suv_factor_from_dicom(folder) == pytest.approx(_hand_factor(75.0, 370e6, 6586.2, 3000.0), rel=1e-4)


def test_decay_correction_admin_does_not_decay_the_dose(tmp_path):
    folder, _ = _series(tmp_path, DecayCorrection="ADMIN")
    assert pet_suv_factor_from_dicom(folder) == pytest.approx(75000.0 / 370e6, rel=1e-4)


@pytest.mark.parametrize("tag", ["PatientWeight", "RadionuclideTotalDose", "RadionuclideHalfLife", "Units",
                                 "DecayCorrection"])
def test_a_missing_header_is_a_one_line_error_naming_the_tag(tmp_path, tag):
    folder, _ = _series(tmp_path, **{tag: None})
    with pytest.raises(InputError) as info:
        pet_suv_factor_from_dicom(folder)
    message = str(info.value)
    assert "\n" not in message and tag in message and "--suv-factor" in message


def test_missing_injection_time_and_sequence_are_named(tmp_path):
    folder, _ = _series(tmp_path, "a", RadiopharmaceuticalStartDateTime=None)
    with pytest.raises(InputError, match="RadiopharmaceuticalStartDateTime.*--suv-factor"):
        pet_suv_factor_from_dicom(folder)
    folder, _ = _series(tmp_path, "b", with_sequence=False)
    with pytest.raises(InputError, match="RadiopharmaceuticalInformationSequence.*--suv-factor"):
        pet_suv_factor_from_dicom(folder)


@pytest.mark.parametrize("units, words", [("CNTS", "CNTS"), ("GML", "--suv-factor 1"), ("PROPCPS", "PROPCPS")])
def test_units_other_than_bqml_are_refused_clearly(tmp_path, units, words):
    folder, _ = _series(tmp_path, Units=units)
    with pytest.raises(InputError) as info:
        pet_suv_factor_from_dicom(folder)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_folder_without_dicom_is_an_input_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not dicom")
    with pytest.raises(InputError, match="no DICOM"):
        pet_suv_factor_from_dicom(tmp_path)


def test_measure_with_a_pet_dicom_folder_applies_slopes_and_the_header_factor(tmp_path):
    folder, _ = _series(tmp_path)
    pet = sitk.ReadImage([str(p) for p in sorted(folder.iterdir())])  # the reference reading
    stored = sitk.GetArrayFromImage(pet)
    # every slice has its own RescaleSlope: the values read are the activity to within one slope step
    assert np.allclose(stored, _activity(), rtol=0, atol=np.abs(_activity()).max() / 30000.0 * 1.6)
    labels = sitk.Image(pet.GetSize(), sitk.sitkUInt8)
    labels.CopyInformation(pet)
    labels[3:7, 2:6, 1:4] = 1
    table = measure(labels, pet=folder)
    factor = _hand_factor(75.0, 370e6, 6586.2, 3600.0)
    mask = sitk.GetArrayFromImage(labels) > 0
    assert table.suv_factor == pytest.approx(factor, rel=1e-4)
    assert table.rows[0].suv_max == pytest.approx(stored[mask].max() * factor, rel=1e-4)
    assert table.rows[0].suv_mean == pytest.approx(stored[mask].mean() * factor, rel=1e-4)
    # an explicit factor wins over the headers
    assert measure(labels, pet=folder, suv_factor=2.0).rows[0].suv_max == pytest.approx(stored[mask].max() * 2.0)


def test_a_pet_image_without_headers_needs_a_factor(tmp_path):
    folder, _ = _series(tmp_path)
    pet = sitk.ReadImage([str(p) for p in sorted(folder.iterdir())])
    labels = sitk.Image(pet.GetSize(), sitk.sitkUInt8)
    labels.CopyInformation(pet)
    labels[1, 1, 1] = 1
    with pytest.raises(InputError, match="suv_factor"):
        measure(labels, pet=pet)
    nifti = tmp_path / "pet.nii.gz"
    sitk.WriteImage(pet, str(nifti))
    with pytest.raises(InputError, match="--suv-factor"):
        measure(labels, pet=nifti)
    assert measure(labels, pet=nifti, suv_factor=1.5).rows[0].suv_max == pytest.approx(
        sitk.GetArrayFromImage(pet)[1, 1, 1] * 1.5, rel=1e-6)
    with pytest.raises(InputError, match="> 0"):
        measure(labels, pet=pet, suv_factor=-1.0)
    assert math.isfinite(measure(labels, pet=pet, suv_factor=1.0).rows[0].suv_peak)
