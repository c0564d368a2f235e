"""Every read path reports NaN/Inf, damaged files give one ``error:`` line, 4D files are split or explained.

Issue #21 part 3: ITK's NIfTI reader turns NaN/Inf into 0 (so a partly-NaN NIfTI was
accepted and an all-NaN one called "constant (every voxel is 0.0)"); niftilib and GDCM
print to fd 2 before the ``error:`` line; a 4D file's error named a Python function.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import SimpleITK as sitk
from cli_helpers import one_error_line, run_cli

from tumorseg_core.errors import InputError, TumorSegError
from tumorseg_core.imaging import io, stream_resample

OBLIQUE = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # rotated about z and flipped in z
SPACING = (0.7, 1.3, 2.9)


def _write(path, array, pixel_type=sitk.sitkFloat32):
    image = sitk.Cast(sitk.GetImageFromArray(array), pixel_type)
    image.SetSpacing(SPACING)
    image.SetOrigin((4.0, -7.0, 11.0))
    image.SetDirection(OBLIQUE)
    sitk.WriteImage(image, str(path))
    return path


def _with_nonfinite(n_nan: int, n_inf: int, shape=(9, 10, 11)) -> np.ndarray:
    array = np.random.default_rng(1).random(shape).astype(np.float32) + 1
    flat = array.reshape(-1)
    flat[np.arange(n_nan) * 7] = np.nan
    flat[np.arange(n_inf) * 7 + 3] = np.inf
    return array


READERS = {
    "read_image": lambda p: io.read_image(p),
    "read_images": lambda p: io.read_images([p]),
    "read_channels": lambda p: io.read_channels(p),
    "stream": lambda p: stream_resample.read_to_model_grid(p, (1.5, 1.5, 1.5)),
    "stream_small_slabs": lambda p: stream_resample.read_to_model_grid(p, (1.5, 1.5, 1.5), slab_voxels=200),
    "stream_nearest": lambda p: stream_resample.read_to_model_grid(p, (1.5, 1.5, 1.5), interpolator="nearest"),
}


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".mha", ".nrrd"])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_partly_nan_is_reported_on_every_read_path(tmp_path, ext, reader):
    path = _write(tmp_path / f"partly{ext}", _with_nonfinite(5, 2))
    with pytest.raises(InputError, match="has 5 NaN and 2 Inf voxels; replace them"):
        READERS[reader](path)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".mha"])
@pytest.mark.parametrize("reader", ["read_image", "stream", "stream_small_slabs"])
def test_all_nan_is_not_called_constant(tmp_path, ext, reader):
    path = _write(tmp_path / f"all_nan{ext}", np.full((6, 7, 8), np.nan, dtype=np.float32))
    with pytest.raises(InputError) as error:
        READERS[reader](path)
    assert "336 NaN and 0 Inf voxels (every voxel)" in str(error.value)
    assert "constant" not in str(error.value)


def test_float64_nifti_nan_counted(tmp_path):
    path = _write(tmp_path / "double.nii.gz", _with_nonfinite(3, 0).astype(np.float64), sitk.sitkFloat64)
    with pytest.raises(InputError, match="has 3 NaN and 0 Inf voxels"):
        io.read_image(path)


def test_finite_nifti_still_reads_on_its_grid(tmp_path):
    array = _with_nonfinite(0, 0)
    path = _write(tmp_path / "fine.nii.gz", array)
    image = io.read_image(path)
    assert image.GetSpacing() == pytest.approx(SPACING) and image.GetDirection() == pytest.approx(OBLIQUE)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), array)


def _zero_dim_nifti(path):
    _write(path.with_name("good.nii"), np.ones((4, 5, 6), np.float32))
    raw = bytearray(path.with_name("good.nii").read_bytes())
    raw[42:44] = struct.pack("<h", 0)  # dim[1] = 0
    path.write_bytes(bytes(raw))
    return path


def test_zero_dimension_nifti_prints_one_error_line(tmp_path):
    path = _zero_dim_nifti(tmp_path / "zero_dim.nii")
    line = one_error_line(run_cli("segment", str(path), "-o", str(tmp_path / "out.nii.gz")))
    assert str(path) in line and "bad dim" in line and "0x" not in line
    assert not (tmp_path / "out.nii.gz").exists()


def test_folder_without_dicom_prints_one_error_line(tmp_path):
    folder = tmp_path / "empty_folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "notes.txt").write_text("not dicom")
    line = one_error_line(run_cli("segment", str(folder), "-o", str(tmp_path / "out.nii.gz")))
    assert "without a DICOM series" in line


def test_native_stderr_is_captured_not_lost(tmp_path, capfd):
    path = _zero_dim_nifti(tmp_path / "zero_dim.nii.gz")
    with pytest.raises(InputError, match="bad dim"):
        io.read_image(path)
    assert capfd.readouterr().err == ""


def test_4d_error_names_the_command_line_way(tmp_path):
    channels = [sitk.GetImageFromArray(_with_nonfinite(0, 0)) for _ in range(3)]
    sitk.WriteImage(sitk.JoinSeries(channels), str(tmp_path / "four_d.nii.gz"))
    line = one_error_line(run_cli("segment", str(tmp_path / "four_d.nii.gz"), "-o", str(tmp_path / "o.nii.gz")))
    assert "fslsplit" in line and "its own 3D file" in line
    assert "read_channels" not in line and "function" not in line


@pytest.mark.parametrize("kind", ["4d", "vector"])
def test_read_images_splits_a_file_with_the_model_channel_count(tmp_path, kind):
    arrays = [np.random.default_rng(c).random((5, 6, 7)).astype(np.float32) for c in range(2)]
    images = [sitk.GetImageFromArray(a) for a in arrays]
    for image in images:
        image.SetSpacing(SPACING)
        image.SetDirection(OBLIQUE)
    joined = sitk.JoinSeries(images) if kind == "4d" else sitk.Compose(images)
    path = tmp_path / ("two.nii.gz" if kind == "4d" else "two.nrrd")
    sitk.WriteImage(joined, str(path))
    split = io.read_images([path], channels=2)
    assert len(split) == 2
    for array, channel in zip(arrays, split):
        assert channel.GetSpacing() == pytest.approx(SPACING) and channel.GetDirection() == pytest.approx(OBLIQUE)
        assert np.array_equal(sitk.GetArrayViewFromImage(channel), array)
    with pytest.raises(InputError, match="fslsplit"):
        io.read_images([path], channels=3)


def test_output_that_is_a_folder_is_refused_before_work(tmp_path):
    (tmp_path / "out.nii.gz").mkdir()
    with pytest.raises(TumorSegError, match="is a folder"):
        io.check_output_path(tmp_path / "out.nii.gz")


def test_check_output_path_creates_and_removes_a_probe(tmp_path, monkeypatch):
    opened = []
    real_open = open

    def spy(file, mode="r", *args, **kwargs):
        opened.append((str(file), mode))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    io.check_output_path(tmp_path / "labels.seg.nrrd")
    probes = [f for f, mode in opened if mode == "xb"]
    assert len(probes) == 1 and probes[0].startswith(str(tmp_path)) and probes[0].endswith(".seg.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_is_refused(tmp_path, monkeypatch):
    def refuse(file, mode="r", *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(TumorSegError, match="permission denied"):
        io.check_output_path(tmp_path / "labels.nii.gz")
