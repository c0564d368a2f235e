"""Fuzz the image readers: every case reads onto its header's exact grid or fails with one line.

Random MetaImage files written by hand (any size incl. 0 and 1 voxel, spacing incl. tiny,
huge, zero, negative, NaN, directions incl. singular and non-orthonormal, every element
type, vectors, NaN/Inf patterns, truncated or compressed data) and NIfTI files with a
patched header go through ``io.read_image``, ``io.read_channels`` and
``stream_resample.read_to_model_grid``. A success must have the grid ITK reports for the
header, finite voxels, and the streamed and whole-image paths must agree on the grids;
a failure must be a TumorSegError of one line; the input file must be unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from fuzz_files import (
    MET_TYPES,
    NIFTI_DIM,
    NIFTI_PIXDIM,
    expect_one_line,
    patch_nifti,
    sha256,
    voxel_bytes,
    write_mha,
    write_sitk,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tumorseg_core.imaging import io, stream_resample
from tumorseg_core.imaging.geometry import GridGeometry

SPACINGS = [1.0, 0.5, 2.7, 1e-9, 1e-30, 1e9, 1e30, 0.0, -1.0, float("nan"), float("inf")]
DIRECTIONS = {
    "identity": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "flipped": (-1, 0, 0, 0, 1, 0, 0, 0, -1),
    "oblique": (0.8, -0.6, 0, 0.6, 0.8, 0, 0, 0, 1),
    "permuted": (0, 1, 0, 0, 0, 1, 1, 0, 0),
    "non_orthonormal": (1, 0.5, 0, 0, 1, 0, 0, 0, 1),
    "scaled": (2, 0, 0, 0, 2, 0, 0, 0, 2),
    "singular": (1, 0, 0, 1, 0, 0, 0, 0, 1),
    "zero": (0,) * 9,
    "nan": (float("nan"), 0, 0, 0, 1, 0, 0, 0, 1),
}
PATTERNS = ["random", "random", "one_nan", "one_inf", "all_nan", "half_nan", "constant", "bool"]
MODEL_SPACING = (1.5, 1.5, 1.5)
SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _direction(name: str, ndims: int) -> tuple:
    base = np.asarray(DIRECTIONS[name], dtype=float).reshape(3, 3)
    full = np.eye(ndims)
    k = min(3, ndims)
    full[:k, :k] = base[:k, :k]
    return tuple(full.ravel())


def _header_grid(path) -> GridGeometry | None:
    """The 3D grid ITK reads from the header, or None if ITK cannot read it."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with io.native_stderr_captured():
            reader.ReadImageInformation()
    except RuntimeError:
        return None
    n = reader.GetDimension()
    direction = np.asarray(reader.GetDirection()).reshape(n, n)[:3, :3].copy()
    spacing = list(reader.GetSpacing()[:3])
    for axis, s in enumerate(spacing):  # ITK's reader turns a negative spacing into a flipped axis
        if s < 0:
            spacing[axis] = -s
            direction[:, axis] *= -1
    return GridGeometry(tuple(reader.GetSize()[:3]), tuple(spacing), tuple(reader.GetOrigin()[:3]),
                        tuple(float(d) + 0.0 for d in direction.ravel()))


def _check_reads(path, fuzz_cases) -> None:
    before = sha256(path)
    header = _header_grid(path)
    image = expect_one_line(lambda: io.read_image(path))
    if image is not None:
        assert header is not None and image.GetDimension() == 3
        assert GridGeometry.of(image) == header
        array = sitk.GetArrayViewFromImage(image)
        assert array.shape == header.size[::-1]
        assert np.issubdtype(array.dtype, np.integer) or np.isfinite(array).all()
    channels = expect_one_line(lambda: io.read_channels(path))
    for channel in channels or ():
        assert GridGeometry.of(channel) == header
    streamed = expect_one_line(lambda: stream_resample.read_to_model_grid(path, MODEL_SPACING, "LPS",
                                                                          slab_voxels=64))
    if streamed is not None:
        volume, model, source = streamed
        assert source == header and volume.shape == model.size[::-1] and np.isfinite(volume).all()
        assert image is not None, "the streamed path accepted what the whole-image path refused"
        whole = stream_resample._whole_image_path(path, MODEL_SPACING, "LPS", "linear")
        assert whole[1] == model and whole[2] == source
        np.testing.assert_allclose(volume, whole[0], rtol=1e-4, atol=1e-3 * (1 + float(np.abs(whole[0]).max())))
    elif image is not None:
        # Refused on the model grid only: the reason must be the grid's size at the model spacing.
        extent = np.asarray(header.size) * np.asarray(header.spacing)
        assert math.prod(max(1.0, round(e / 1.5)) for e in extent) > io.MAX_VOXELS or not np.isfinite(extent).all()
    assert sha256(path) == before, "the input file changed"
    fuzz_cases.add("image reader")


@st.composite
def mha_cases(draw):
    ndims = draw(st.sampled_from([3, 3, 3, 2, 4]))
    size = tuple(draw(st.lists(st.sampled_from([0, 1, 2, 3, 5, 7]), min_size=ndims, max_size=ndims)))
    spacing = tuple(draw(st.lists(st.sampled_from(SPACINGS), min_size=ndims, max_size=ndims)))
    direction = draw(st.sampled_from(sorted(DIRECTIONS)))
    element = draw(st.sampled_from(sorted(MET_TYPES)))
    channels = draw(st.sampled_from([1, 1, 1, 2, 3]))
    pattern = draw(st.sampled_from(PATTERNS))
    cut = draw(st.sampled_from([None, None, None, 0, 1, 7]))
    compressed = draw(st.booleans())
    origin = draw(st.sampled_from([(0, 0, 0), (-100.5, 3, 1e6), (float("nan"), 0, 0)]))
    return ndims, size, spacing, direction, element, channels, pattern, cut, compressed, origin


@SETTINGS
@given(case=mha_cases())
def test_fuzz_metaimage(tmp_path_factory, fuzz_cases, case):
    ndims, size, spacing, direction, element, channels, pattern, cut, compressed, origin = case
    data = voxel_bytes(size, element, channels, pattern)
    if cut is not None:
        data = data[: max(0, len(data) - 1 - cut * 5)]
    path = write_mha(tmp_path_factory.mktemp("mha") / "case.mha", size, spacing, _direction(direction, ndims),
                     data, element, channels, origin, compressed)
    _check_reads(path, fuzz_cases)


@st.composite
def nifti_cases(draw):
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=3, max_size=3)))
    dtype = draw(st.sampled_from(["uint8", "int8", "int16", "uint16", "int32", "float32", "float64", "complex64",
                                  "bool", "vector"]))
    pattern = draw(st.sampled_from(["none", "one_nan", "all_nan", "inf"]))
    dim = draw(st.sampled_from([None, 0, -1, 1]))  # a patched size of one axis
    pixdim = draw(st.sampled_from([None, 0.0, -2.0, float("nan"), 1e-30, 1e30]))
    gz = draw(st.booleans())
    return shape, dtype, pattern, dim, pixdim, gz


@SETTINGS
@given(case=nifti_cases())
def test_fuzz_nifti(tmp_path_factory, fuzz_cases, case):
    shape, dtype, pattern, dim, pixdim, gz = case
    rng = np.random.default_rng(len(shape) + shape[0])
    vector = dtype == "vector"
    if dtype == "bool":
        array = rng.random(shape) > 0.5
        array = array.astype(np.uint8)
    elif vector:
        array = rng.random(shape + (2,)).astype(np.float32)
    elif dtype == "complex64":
        array = (rng.random(shape) + 1j * rng.random(shape)).astype(np.complex64)
    else:
        array = (rng.random(shape) * 100).astype(dtype)
    if array.dtype.kind in "fc" and pattern != "none":
        flat = array.reshape(-1)
        if pattern == "one_nan":
            flat[0] = np.nan
        elif pattern == "all_nan":
            flat[:] = np.nan
        else:
            flat[-1] = np.inf
    path = tmp_path_factory.mktemp("nii") / ("case.nii.gz" if gz else "case.nii")
    write_sitk(path, array, spacing=(0.7, 1.1, 2.5), direction=DIRECTIONS["oblique"], vector=vector)
    patches = []
    if dim is not None:
        patches.append((NIFTI_DIM + 2, "h", (dim,)))
    if pixdim is not None:
        patches.append((NIFTI_PIXDIM + 4 * 2, "f", (pixdim,)))
    if patches:

        patch_nifti(path, patches)
    _check_reads(path, fuzz_cases)
