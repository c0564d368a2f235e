"""Streaming a file onto the model grid slab by slab (stream_resample) versus the whole-image path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tumorseg_core.errors import InputError
from tumorseg_core.imaging import geometry, io
from tumorseg_core.imaging import stream_resample as sr
from tumorseg_core.imaging.geometry import GridGeometry

SIZE_ZYX = (30, 36, 40)
TINY = 1  # slab_voxels that forces chunks of one model slice
FEW = 40 * 36 * 9  # a few chunks of several slices
WHOLE = 10**9  # one chunk: the slab is the whole file


def _oblique(rotation_direction) -> tuple[float, ...]:
    """20 degrees about x, then 20 degrees about y."""
    x = np.asarray(rotation_direction("x", 20.0)).reshape(3, 3)
    y = np.asarray(rotation_direction("y", 20.0)).reshape(3, 3)
    return tuple((x @ y).ravel())


# name: (direction or "oblique", input spacing, model spacing, orientation)
CASES = {
    "identity": (None, (1.0, 1.0, 1.0), (1.5, 1.5, 1.5), None),
    "ras": ((-1, 0, 0, 0, -1, 0, 0, 0, 1), (1.0, 1.0, 1.0), (1.5, 1.5, 1.5), "LPS"),
    "flipped": ((1, 0, 0, 0, -1, 0, 0, 0, -1), (0.8, 1.0, 1.25), (1.5, 1.5, 1.5), "RAS"),
    "permuted": ((0, 0, 1, 1, 0, 0, 0, 1, 0), (1.0, 1.0, 2.0), (1.5, 1.5, 1.5), "LPS"),
    "oblique": ("oblique", (1.0, 1.0, 1.0), (1.5, 1.5, 1.5), None),
    "oblique_lps": ("oblique", (0.9, 0.9, 1.5), (1.2, 1.2, 1.2), "LPS"),
    "aniso_up": (None, (0.7, 0.9, 2.5), (0.5, 0.5, 0.5), None),
    "aniso_down": ((-1, 0, 0, 0, -1, 0, 0, 0, 1), (0.7, 0.9, 2.5), (2.0, 2.0, 4.0), "RAS"),
}


def _write(tmp_path: Path, name: str, array: np.ndarray, spacing=(1.0, 1.0, 1.0), direction=None,
           origin=(-112.3, 45.6, -207.9), pixel_type: int = sitk.sitkFloat32) -> Path:
    image = sitk.Cast(sitk.GetImageFromArray(array), pixel_type)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection([float(d) for d in direction])
    path = tmp_path / name
    sitk.WriteImage(image, str(path), useCompression=name.endswith(".gz"))
    return path


def _random(seed: int = 0, size_zyx=SIZE_ZYX) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 300.0, size_zyx)


def _whole(path, spacing, orientation=None, interpolator="linear"):
    """The reference: read_image + to_model_grid."""
    image = io.read_image(path)
    model = geometry.to_model_grid(image, spacing, orientation, interpolator)
    return sitk.GetArrayFromImage(model), GridGeometry.of(model), GridGeometry.of(image)


def _assert_same(got, expected, exact: bool) -> None:
    """Grids equal; voxels bit-identical, or (chunked) equal up to ITK's index rounding."""
    array, model, source = got
    ref_array, ref_model, ref_source = expected
    assert model == ref_model and source == ref_source
    assert array.dtype == ref_array.dtype and array.shape == ref_array.shape and array.flags.c_contiguous
    if exact:
        np.testing.assert_array_equal(array, ref_array)
        return
    # A chunk's input index is computed from the slab's origin, not the file's: a value
    # may move by one float32 ulp, or by ~1e-12 where it is an exact 0 in one path.
    diff = np.abs(array.astype(np.float64) - ref_array)
    limit = np.maximum(np.spacing(np.abs(ref_array)), 1e-9 * float(np.abs(ref_array).max()))
    assert np.all(diff <= limit), f"max difference {diff.max()} beyond one ulp"
    assert np.count_nonzero(diff) <= 0.02 * diff.size


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("ext, pixel_type", [(".nii.gz", sitk.sitkFloat32), (".nii", sitk.sitkInt16),
                                             (".mha", sitk.sitkFloat32), (".mha", sitk.sitkInt16)])
def test_matches_whole_image_path(case, ext, pixel_type, tmp_path, rotation_direction):
    direction, spacing, model_spacing, orientation = CASES[case]
    if direction == "oblique":
        direction = _oblique(rotation_direction)
    path = _write(tmp_path, f"img{ext}", _random(), spacing, direction, pixel_type=pixel_type)
    assert sr.can_stream(path)
    expected = _whole(path, model_spacing, orientation)
    # One chunk from slice 0: the same ITK arithmetic as the whole image, so bit-identical.
    _assert_same(sr.read_to_model_grid(path, model_spacing, orientation, slab_voxels=WHOLE), expected, exact=True)
    for slab_voxels in (TINY, FEW):
        _assert_same(sr.read_to_model_grid(path, model_spacing, orientation, slab_voxels=slab_voxels), expected,
                     exact=False)


def test_ct_like_geometry_is_bit_identical_in_chunks(tmp_path):
    """Axis-aligned, float32 header values, z spacing 1 mm: the chunks' index arithmetic is exact."""
    path = _write(tmp_path, "ct.nii.gz", _random(3, (40, 48, 48)), (0.68359375, 0.68359375, 1.0),
                  origin=(-164.5, -180.25, -310.0))
    expected = _whole(path, (1.5, 1.5, 1.5))
    for slab_voxels in (TINY, 48 * 48 * 10):
        _assert_same(sr.read_to_model_grid(path, (1.5, 1.5, 1.5), slab_voxels=slab_voxels), expected, exact=True)


def test_chunks_cover_the_model_grid_once(tmp_path, rotation_direction):
    model = GridGeometry((27, 24, 20), (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    source = GridGeometry((40, 36, 30), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    chunks = list(sr._chunks(model, source, TINY))
    assert [(c[1], c[2]) for c in chunks] == [(k, k + 1) for k in range(20)]  # one slice each
    assert all(c[0] == 2 for c in chunks) and all(0 <= c[3] < c[4] <= 30 for c in chunks)
    few = list(sr._chunks(model, source, FEW))
    assert 1 < len(few) < 20 and few[0][1] == 0 and few[-1][2] == 20
    assert all(a[2] == b[1] for a, b in zip(few, few[1:]))
    assert all((c[4] - c[3]) * 40 * 36 <= FEW for c in few)
    # A permuted input: the model's x axis follows the file's z axis.
    permuted = GridGeometry((30, 40, 36), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0, 0, 1, 1, 0, 0, 0, 1, 0))
    reoriented = geometry.model_grid(permuted, (1.5, 1.5, 1.5), "LPS")
    assert {c[0] for c in sr._chunks(reoriented, permuted, FEW)} == {0}


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".mhd"])
def test_slabs_hold_the_values_of_the_full_read(ext, tmp_path):
    path = _write(tmp_path, f"img{ext}", _random(1), (0.7, 0.9, 2.5))
    reader = sr._stream_reader(path)
    assert reader is not None
    source = GridGeometry(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                          tuple(reader.GetDirection()))
    full = io.read_image(path)
    assert source == GridGeometry.of(full)
    slab = sr._read_slab(reader, source, 11, 17)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(slab), sitk.GetArrayViewFromImage(full)[11:17])
    assert slab.GetOrigin() == full.TransformIndexToPhysicalPoint((0, 0, 11))


@pytest.mark.parametrize("interpolator, spacing", [("nearest", (1.5, 1.5, 1.5)), ("bspline", (1.5, 1.5, 1.5)),
                                                   ("linear", None)])
def test_other_modes_take_the_whole_image_path(interpolator, spacing, tmp_path):
    path = _write(tmp_path, "img.nii.gz", _random(2), (0.7, 0.9, 2.5), pixel_type=sitk.sitkInt16)
    expected = _whole(path, spacing, "RAS", interpolator)
    _assert_same(sr.read_to_model_grid(path, spacing, "RAS", interpolator, slab_voxels=TINY), expected, exact=True)


def test_nrrd_and_4d_files_fall_back(tmp_path):
    nrrd = _write(tmp_path, "img.nrrd", _random(4), (0.7, 0.9, 2.5))
    assert not sr.can_stream(nrrd)  # NRRD reads the whole file for any region
    _assert_same(sr.read_to_model_grid(nrrd, (1.5, 1.5, 1.5), slab_voxels=TINY), _whole(nrrd, (1.5, 1.5, 1.5)),
                 exact=True)
    four = sitk.JoinSeries([sitk.GetImageFromArray(_random(5).astype(np.float32))])  # (x, y, z, 1)
    four.SetSpacing((0.7, 0.9, 2.5, 1.0))
    path = tmp_path / "four.mha"  # ITK reads a NIfTI with a 4th axis of length 1 as 3D already
    sitk.WriteImage(four, str(path))
    assert sitk.ReadImage(str(path)).GetDimension() == 4 and not sr.can_stream(path)
    got = sr.read_to_model_grid(path, (1.5, 1.5, 1.5), slab_voxels=TINY)
    _assert_same(got, _whole(path, (1.5, 1.5, 1.5)), exact=True)
    assert got[2].size == (40, 36, 30)


def _error(call) -> str:
    with pytest.raises(InputError) as info:
        call()
    return str(info.value)


def test_nan_and_inf_are_counted_over_every_slab(tmp_path):
    array = _random(6).astype(np.float32)
    array[3, 4, 5] = array[17, 0, 0] = np.nan
    array[29, 35, 39] = np.inf
    array[29, 0, 1] = -np.inf
    path = _write(tmp_path, "nan.mha", array)  # ITK 5.4 reads NaN/Inf in NIfTI as 0
    expected = _error(lambda: io.read_image(path))
    assert "2 NaN and 2 Inf" in expected
    for slab_voxels in (TINY, FEW, WHOLE):
        assert _error(lambda n=slab_voxels: sr.read_to_model_grid(path, (1.5, 1.5, 1.5), slab_voxels=n)) == expected


@pytest.mark.parametrize("value", [0.0, -3.5])
def test_constant_image_is_rejected(value, tmp_path):
    path = _write(tmp_path, "flat.nii.gz", np.full(SIZE_ZYX, value, dtype=np.float32))
    expected = _error(lambda: io.read_image(path))
    assert "empty/constant" in expected
    assert _error(lambda: sr.read_to_model_grid(path, (1.5, 1.5, 1.5), slab_voxels=TINY)) == expected
    # Constant in every slab but one voxel in the last slice: not constant.
    array = np.full(SIZE_ZYX, value, dtype=np.float32)
    array[-1, -1, -1] = value + 1
    path = _write(tmp_path, "almost.nii.gz", array)
    _assert_same(sr.read_to_model_grid(path, (1.5, 1.5, 1.5), slab_voxels=TINY), _whole(path, (1.5, 1.5, 1.5)),
                 exact=False)


def test_slices_no_chunk_needs_are_still_checked(tmp_path):
    """A model grid coarser than the file leaves end slices unread by any chunk; NaN there still counts."""
    array = _random(7, (30, 8, 8)).astype(np.float32)
    array[0, 0, 0] = np.nan
    path = _write(tmp_path, "ends.mha", array)
    expected = _error(lambda: io.read_image(path))
    assert _error(lambda: sr.read_to_model_grid(path, (1.0, 1.0, 12.0), slab_voxels=TINY)) == expected


def test_unreadable_inputs_give_the_read_image_errors(tmp_path):
    missing = tmp_path / "missing.nii.gz"
    assert _error(lambda: sr.read_to_model_grid(missing, (1.5, 1.5, 1.5))) == _error(lambda: io.read_image(missing))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("no DICOM here")
    assert not sr.can_stream(folder)
    assert _error(lambda: sr.read_to_model_grid(folder, (1.5, 1.5, 1.5))) == _error(lambda: io.read_image(folder))
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image")
    assert _error(lambda: sr.read_to_model_grid(garbage, (1.5, 1.5, 1.5))) == _error(lambda: io.read_image(garbage))
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(_random(8, (36, 40)).astype(np.float32)), str(flat))
    assert "2D" in _error(lambda: io.read_image(flat))
    assert _error(lambda: sr.read_to_model_grid(flat, (1.5, 1.5, 1.5))) == _error(lambda: io.read_image(flat))
    single = _write(tmp_path, "single.nii.gz", _random(9, (1, 36, 40)))
    assert _error(lambda: sr.read_to_model_grid(single, (1.5, 1.5, 1.5))) == _error(lambda: io.read_image(single))


_MEMORY_SCRIPT = """
import sys
import SimpleITK as sitk
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
from tumorseg_core.imaging import geometry, io, stream_resample as sr

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

mode, path, warm = sys.argv[1:4]
sr.read_to_model_grid(warm, (2.0, 2.0, 2.0), slab_voxels=1)  # load ITK's readers and threads first
geometry.to_model_grid(io.read_image(warm), (2.0, 2.0, 2.0))
before = status("VmRSS")
if mode == "stream":
    out = sr.read_to_model_grid(path, (2.0, 2.0, 2.0), slab_voxels=200 * 200 * 16)[0]
else:
    out = sitk.GetArrayFromImage(geometry.to_model_grid(io.read_image(path), (2.0, 2.0, 2.0)))
print(status("VmHWM") - before, out.shape)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux)")
def test_streaming_never_holds_the_whole_input(tmp_path):
    # Smooth content compresses (and writes) fast; 200x200x120 float32 is 19.2 MB.
    z, y, x = np.meshgrid(*(np.linspace(0.0, 1.0, n, dtype=np.float32) for n in (120, 200, 200)), indexing="ij")
    path = _write(tmp_path, "big.nii.gz", (1000 * np.sin(6 * x) * np.cos(5 * y) + 300 * z).astype(np.float32))
    warm = _write(tmp_path, "warm.nii.gz", _random(10))
    nbytes = 200 * 200 * 120 * 4
    root = Path(__file__).resolve().parents[2]

    def growth(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, mode, str(path), str(warm)],
                              capture_output=True, encoding="utf-8", cwd=root, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        value, _shape = done.stdout.split(maxsplit=1)
        return int(value)

    streamed = growth("stream")
    assert streamed < 0.6 * nbytes, f"streaming grew the peak by {streamed / 2**20:.1f} MB"
    assert growth("whole") > 1.5 * nbytes  # the measurement sees the whole-image path's two copies
