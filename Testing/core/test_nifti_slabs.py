"""nifti_slabs: a .nii.gz inflated once, forward, gives ITK's voxels slab by slab."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tumorseg_core.errors import InputError
from tumorseg_core.imaging import nifti_slabs, stream_resample
from tumorseg_core.imaging.geometry import to_model_grid
from tumorseg_core.imaging.io import read_image


def _header_reader(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def _write_nii(tmp_path: Path, array: np.ndarray, name: str = "image.nii.gz") -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 2.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_slabs_equal_itk_for_every_voxel_type(dtype, tmp_path) -> None:
    array = (np.random.default_rng(0).normal(size=(17, 9, 11)) * 40 + 60).astype(dtype)
    path = _write_nii(tmp_path, array)
    slabs = nifti_slabs.open_slabs(path, _header_reader(path))
    assert slabs is not None
    full = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    # overlapping, repeated, empty and gapped slabs, always moving forward
    for z0, z1 in [(0, 4), (2, 7), (2, 5), (7, 7), (9, 13), (15, 17)]:
        np.testing.assert_array_equal(slabs.slab(z0, z1), full[z0:z1])
    with pytest.raises(ValueError, match="not ahead"):
        slabs.slab(3, 6)
    slabs.close()


def test_non_finite_values_become_zero_as_itk_reads_them(tmp_path) -> None:
    array = np.ones((6, 5, 4), np.float32)
    array[1, 2, 3], array[4, 0, 0] = np.nan, -np.inf
    path = _write_nii(tmp_path, array)
    slabs = nifti_slabs.open_slabs(path, _header_reader(path))
    np.testing.assert_array_equal(slabs.slab(0, 6), sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    assert slabs.slab(0, 6)[1, 2, 3] == 0


def _rewrite(path: Path, edit) -> Path:
    """Decompress, let ``edit`` change the raw bytes, compress again."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    path.write_bytes(gzip.compress(bytes(edit(raw))))
    return path


def test_scaled_and_other_files_are_left_to_itk(tmp_path) -> None:
    array = (np.random.default_rng(1).normal(size=(12, 10, 8)) * 100).astype(np.int16)
    path = _write_nii(tmp_path, array)

    def scale(raw: bytearray) -> bytearray:
        raw[112:120] = struct.pack("<2f", 2.0, 5.0)  # scl_slope, scl_inter
        return raw

    _rewrite(path, scale)
    assert nifti_slabs.open_slabs(path, _header_reader(path)) is None
    whole = sitk.GetArrayFromImage(to_model_grid(read_image(path), (1.5, 1.5, 1.5)))
    streamed = stream_resample.read_to_model_grid(path, (1.5, 1.5, 1.5), slab_voxels=8 * 10 * 2)[0]
    np.testing.assert_allclose(streamed, whole, rtol=1e-6, atol=1e-4)  # ITK's region reader, scaled values
    mha = tmp_path / "image.mha"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(mha))
    assert nifti_slabs.open_slabs(mha, _header_reader(mha)) is None


def test_a_truncated_file_is_a_one_line_input_error(tmp_path) -> None:
    array = (np.random.default_rng(2).normal(size=(30, 20, 20)) * 100).astype(np.float32)
    path = _write_nii(tmp_path, array)
    _rewrite(path, lambda raw: raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated") as info:
        stream_resample.read_to_model_grid(path, (2.0, 2.0, 2.0), slab_voxels=20 * 20 * 4)
    assert "\n" not in str(info.value)


def test_vox_offset_inside_the_header_is_left_to_itk(tmp_path) -> None:
    array = (np.random.default_rng(3).normal(size=(10, 9, 8)) * 100).astype(np.float32)
    path = _write_nii(tmp_path, array)

    def no_extension_bytes(raw: bytearray) -> bytearray:
        raw = raw[:348] + raw[352:]  # data right after the header ...
        raw[108:112] = struct.pack("<f", 0.0)  # ... and vox_offset 0 (ITK reads from byte 348)
        return raw

    _rewrite(path, no_extension_bytes)
    assert nifti_slabs.open_slabs(path, _header_reader(path)) is None
    whole = sitk.GetArrayFromImage(to_model_grid(read_image(path), (1.5, 1.5, 1.5)))
    streamed = stream_resample.read_to_model_grid(path, (1.5, 1.5, 1.5), slab_voxels=8 * 9 * 2)[0]
    np.testing.assert_allclose(streamed, whole, rtol=1e-6, atol=1e-4)


def test_a_stream_that_fails_while_opening_is_left_to_itk(tmp_path) -> None:
    array = (np.random.default_rng(4).normal(size=(10, 9, 8)) * 100).astype(np.float32)
    path = _write_nii(tmp_path, array)

    def far_offset(raw: bytearray) -> bytearray:
        raw[108:112] = struct.pack("<f", 1e6)  # the voxels would start beyond ...
        return raw

    _rewrite(path, far_offset)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # ... the end of a truncated gzip stream
    assert nifti_slabs.open_slabs(path, _header_reader(path)) is None
    with pytest.raises(InputError) as info:
        stream_resample.read_to_model_grid(path, (1.5, 1.5, 1.5))
    assert "\n" not in str(info.value)


def test_gap_slices_are_handed_to_the_caller_once(tmp_path) -> None:
    array = (np.random.default_rng(5).normal(size=(20, 6, 7)) * 10).astype(np.int16)
    path = _write_nii(tmp_path, array)
    skipped: list[int] = []
    slabs = nifti_slabs.open_slabs(path, _header_reader(path), lambda z, s: skipped.append(z) or
                                   np.testing.assert_array_equal(s[0], array[z]))
    slabs.slab(0, 3)
    slabs.slab(7, 9)
    slabs.slab(15, 16)
    assert skipped == [3, 4, 5, 6, 9, 10, 11, 12, 13, 14]


def test_coarse_model_z_spacing_reads_a_gz_file_once(tmp_path, monkeypatch) -> None:
    """Slices between chunks are checked from the one forward stream, not re-read by ITK."""
    array = (np.random.default_rng(6).normal(size=(60, 12, 14)) * 100).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 0.5))
    path = tmp_path / "thin.nii.gz"
    sitk.WriteImage(image, str(path))
    monkeypatch.setattr(stream_resample, "_read_slab", lambda *a: pytest.fail("ITK re-read a slab"))
    streamed = stream_resample.read_to_model_grid(path, (2.0, 2.0, 8.0), slab_voxels=12 * 14 * 4)[0]
    monkeypatch.undo()
    whole = sitk.GetArrayFromImage(to_model_grid(read_image(path), (2.0, 2.0, 8.0)))
    np.testing.assert_allclose(streamed, whole, rtol=1e-6, atol=1e-5)


def test_cancel_between_slabs(tmp_path) -> None:
    from tumorseg_core.errors import CancelledError

    path = _write_nii(tmp_path, (np.random.default_rng(7).normal(size=(30, 9, 8)) * 10).astype(np.float32))
    calls: list[int] = []
    with pytest.raises(CancelledError):
        stream_resample.read_to_model_grid(path, (1.0, 1.0, 1.0), slab_voxels=8 * 9 * 4,
                                           cancel=lambda: calls.append(1) or len(calls) > 2)
    assert len(calls) == 3


def test_non_unit_direction_columns_stream(tmp_path) -> None:
    """A hand-made MetaImage whose direction columns are not unit length (the z step decides the axis)."""
    array = (np.random.default_rng(8).normal(size=(16, 12, 10)) * 10).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetDirection((1, 0, 0, 0, 1, 0.5, 0, 0, 0.3))
    path = tmp_path / "odd.mha"
    sitk.WriteImage(image, str(path))
    whole = sitk.GetArrayFromImage(to_model_grid(read_image(path), (1.5, 1.5, 1.5)))
    streamed = stream_resample.read_to_model_grid(path, (1.5, 1.5, 1.5), slab_voxels=12 * 10 * 3)[0]
    np.testing.assert_allclose(streamed, whole, rtol=1e-6, atol=1e-5)


# NIfTI-1 header fields in order (struct codes), for rewriting a file big-endian.
_HEADER_FIELDS = "i10s18sihcc8h3f4h8f3fhcc4f2i80s24s2h6f4f4f4f16s4s"


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_big_endian_files_equal_itk(dtype, tmp_path) -> None:
    """ITK writes little-endian only: swap a written file's header fields and voxels by hand."""
    array = (np.random.default_rng(9).normal(size=(9, 7, 6)) * 100).astype(dtype)
    path = _write_nii(tmp_path, array)

    def to_big_endian(raw: bytearray) -> bytearray:
        fields = struct.unpack("<" + _HEADER_FIELDS, bytes(raw[:348]))
        header = struct.pack(">" + _HEADER_FIELDS, *fields)
        voxels = np.frombuffer(bytes(raw[352:]), dtype=np.dtype(dtype).newbyteorder("<")).astype(
            np.dtype(dtype).newbyteorder(">"))
        return bytearray(header + bytes(raw[348:352]) + voxels.tobytes())

    little = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    _rewrite(path, to_big_endian)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), little)  # ITK agrees
    slabs = nifti_slabs.open_slabs(path, _header_reader(path))
    assert slabs is not None and slabs.dtype.byteorder == ">"
    np.testing.assert_array_equal(slabs.slab(0, 4), little[:4])
    np.testing.assert_array_equal(slabs.slab(3, 9), little[3:])
