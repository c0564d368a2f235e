"""Geometry round trips: input grid -> model grid -> labels back on the exact input grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tumorseg_core.errors import InputError, TumorSegError
from tumorseg_core.imaging.geometry import (
    GridGeometry,
    align_to_reference,
    bbox_to_slices,
    crop_image,
    labels_to_reference,
    reorient,
    same_grid,
    to_model_grid,
    uncrop_image,
)

GEOMETRIES = {
    "identity": dict(size_xyz=(40, 40, 40), spacing=(1.0, 1.0, 1.0)),
    "ras_like": dict(size_xyz=(40, 40, 40), spacing=(1.0, 1.0, 1.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1),
                     origin=(20.0, 30.0, -10.0)),
    "flip_z": dict(size_xyz=(40, 40, 40), spacing=(1.0, 1.0, 1.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, -1)),
    "oblique30": dict(size_xyz=(40, 40, 40), spacing=(1.0, 1.0, 1.0), direction="rot30", origin=(5.0, -3.0, 2.0)),
    "anisotropic": dict(size_xyz=(56, 56, 8), spacing=(0.7, 0.7, 5.0)),
    "far_origin": dict(size_xyz=(40, 40, 40), spacing=(1.0, 1.0, 1.0), origin=(-1200.0, 800.0, 3000.0)),
}


def _geometry(name, rotation_direction):
    geom = dict(GEOMETRIES[name])
    if geom.get("direction") == "rot30":
        geom["direction"] = rotation_direction("z", 30.0)
    return geom


def _centroid_lps(labels: sitk.Image, value: int = 1) -> np.ndarray:
    """Physical centroid of the voxels equal to ``value`` (indices mapped through the image geometry)."""
    zyx = np.argwhere(sitk.GetArrayViewFromImage(labels) == value)
    assert len(zyx), "no voxels with that label"
    mean_index_xyz = zyx.mean(axis=0)[::-1]
    return np.asarray(labels.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in mean_index_xyz)))


def _threshold_predictor(model_image: sitk.Image) -> sitk.Image:
    """Deterministic stand-in for a network: label 1 where intensity > 55, at model resolution."""
    array = sitk.GetArrayFromImage(model_image)  # (z, y, x)
    labels = sitk.GetImageFromArray((array > 55).astype(np.uint8))
    labels.CopyInformation(model_image)
    return labels


def _assert_exact_grid(out: sitk.Image, ref: sitk.Image) -> None:
    assert out.GetSize() == ref.GetSize()
    assert out.GetSpacing() == ref.GetSpacing()
    assert out.GetOrigin() == ref.GetOrigin()
    assert out.GetDirection() == ref.GetDirection()


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_round_trip_keeps_grid_and_centroid(name, make_sphere_image, rotation_direction):
    geom = _geometry(name, rotation_direction)
    image, _ = make_sphere_image(radius_mm=9.0, **geom)
    # Off-centre sphere so a flipped axis would move the centroid visibly.
    corner = np.asarray(image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, 0.0)))
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(tuple((np.asarray(image.GetSize()) - 1) / 2.0)))
    target = centre + 0.2 * (corner - centre) * np.array([1.0, 1.0, 0.0 if name == "anisotropic" else 1.0])
    image, _ = make_sphere_image(radius_mm=9.0, center_lps=target, **geom)
    truth = _centroid_lps(sitk.Cast(image > 55, sitk.sitkUInt8))

    model_image = to_model_grid(image, (1.5, 1.5, 1.5), "LPS")
    assert model_image.GetSpacing() == (1.5, 1.5, 1.5)
    assert model_image.GetPixelID() == sitk.sitkFloat32
    if name != "oblique30":  # axis-aligned inputs become exactly LPS
        assert np.allclose(model_image.GetDirection(), np.eye(3).ravel())
    out = labels_to_reference(_threshold_predictor(model_image), image)

    _assert_exact_grid(out, image)
    assert out.GetPixelID() == sitk.sitkUInt8
    error = np.abs(_centroid_lps(out) - truth)
    assert np.all(error <= 0.5 * max(image.GetSpacing())), f"{name}: centroid off by {error} mm"
    # The sphere came back with about its volume (not lost or smeared over the image).
    n_in, n_out = int((sitk.GetArrayViewFromImage(image) > 55).sum()), int(sitk.GetArrayViewFromImage(out).sum())
    assert abs(n_out - n_in) <= 0.25 * n_in


def test_model_grid_keeps_extent_and_centre(make_image):
    image = make_image(size_xyz=(30, 20, 10), spacing=(1.0, 2.0, 3.0), origin=(7.0, -4.0, 11.0))
    out = to_model_grid(image, (2.0, 2.0, 2.0), None)
    assert out.GetSize() == (15, 20, 15)
    centre = lambda im: np.asarray(  # noqa: E731
        im.TransformContinuousIndexToPhysicalPoint(tuple((np.asarray(im.GetSize()) - 1) / 2.0)))
    assert np.allclose(centre(out), centre(image))
    tiny = to_model_grid(image, (100.0, 100.0, 100.0), None)
    assert tiny.GetSize() == (1, 1, 1)
    same = to_model_grid(image, None, None)
    assert same_grid(same, image)


def _reoriented_then_resampled(image: sitk.Image, spacing, orientation: str) -> sitk.Image:
    """The straightforward reference: reorient the voxels, cast to float32, then resample."""
    oriented = sitk.Cast(reorient(image, orientation), sitk.sitkFloat32)
    size = np.maximum(1, np.round(np.asarray(oriented.GetSize()) * np.asarray(oriented.GetSpacing())
                                  / np.asarray(spacing))).astype(int)
    d = np.asarray(oriented.GetDirection()).reshape(3, 3)
    centre = np.asarray(oriented.TransformContinuousIndexToPhysicalPoint(tuple((np.asarray(oriented.GetSize()) - 1) / 2)))
    origin = centre - d @ ((size - 1) / 2.0 * np.asarray(spacing))
    return sitk.Resample(oriented, [int(v) for v in size], sitk.Transform(), sitk.sitkLinear, [float(o) for o in origin],
                         [float(v) for v in spacing], oriented.GetDirection(), 0.0, sitk.sitkFloat32)


@pytest.mark.parametrize("name", ["ras_like", "flip_z", "oblique30", "anisotropic"])
@pytest.mark.parametrize("orientation", ["LPS", "RAS", "PIL"])
def test_model_grid_without_reoriented_copy_matches_reorienting_first(name, orientation, make_sphere_image,
                                                                      rotation_direction):
    image = sitk.Cast(make_sphere_image(**_geometry(name, rotation_direction))[0] * 100, sitk.sitkInt16)
    spacing = (1.5, 1.2, 2.0)
    out = to_model_grid(image, spacing, orientation)
    expected = _reoriented_then_resampled(image, spacing, orientation)
    assert out.GetPixelID() == sitk.sitkFloat32  # an int16 CT is interpolated without a float copy
    assert out.GetSize() == expected.GetSize()
    assert np.allclose(out.GetOrigin(), expected.GetOrigin(), atol=1e-6)
    assert np.allclose(out.GetDirection(), expected.GetDirection()) and out.GetSpacing() == expected.GetSpacing()
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(out), sitk.GetArrayViewFromImage(expected), atol=1e-3)
    nearest = to_model_grid(image, spacing, orientation, "nearest")
    assert nearest.GetPixelID() == sitk.sitkInt16 and nearest.GetSize() == expected.GetSize()


def test_reorient_ras_to_lps_flips_axes(make_image):
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    image = make_image(array, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1), origin=(10.0, 20.0, 0.0))
    out = reorient(image, "LPS")
    assert np.allclose(out.GetDirection(), np.eye(3).ravel())
    # The same physical point carries the same value.
    point = image.TransformIndexToPhysicalPoint((1, 2, 3))
    assert out.GetPixel(out.TransformPhysicalPointToIndex(point)) == image.GetPixel((1, 2, 3))
    with pytest.raises(TumorSegError, match="orientation"):
        reorient(image, "LLS")


def test_align_to_reference_different_spacing_and_direction(make_sphere_image, rotation_direction):
    ref, centre = make_sphere_image(radius_mm=8.0, size_xyz=(32, 32, 32), spacing=(1.0, 1.0, 1.0))
    moving, _ = make_sphere_image(radius_mm=8.0, center_lps=centre, size_xyz=(20, 24, 12), spacing=(1.6, 1.4, 3.0),
                                  direction=rotation_direction("x", 20.0),
                                  origin=tuple(centre - np.array([15.0, 16.0, 17.0])))
    same = sitk.Image(ref)
    aligned = align_to_reference([ref, moving, same])
    assert aligned[0] is ref
    for img in aligned[1:]:
        _assert_exact_grid(img, ref)
    # The ball lands where it is in the reference: most reference ball voxels are bright.
    ball = sitk.GetArrayViewFromImage(ref) > 55
    values = sitk.GetArrayViewFromImage(aligned[1])
    assert np.median(values[ball]) > 80
    assert np.median(values[~ball & (values > 0)]) < 30


def test_align_without_overlap_raises(make_image):
    ref = make_image(size_xyz=(16, 16, 16))
    far = make_image(size_xyz=(16, 16, 16), origin=(500.0, 0.0, 0.0))
    with pytest.raises(InputError, match="does not overlap"):
        align_to_reference([ref, far])


def test_same_grid_tolerance(make_image):
    a = make_image(size_xyz=(8, 8, 8), spacing=(1.0, 1.0, 2.0), origin=(3000.0, 0.0, 0.0))
    b = make_image(size_xyz=(8, 8, 8), spacing=(1.0, 1.0, 2.0), origin=(3000.0 + 1e-5, 0.0, 0.0))
    assert same_grid(a, b)
    c = make_image(size_xyz=(8, 8, 8), spacing=(1.0, 1.0, 2.1), origin=(3000.0, 0.0, 0.0))
    d = make_image(size_xyz=(8, 8, 9), spacing=(1.0, 1.0, 2.0), origin=(3000.0, 0.0, 0.0))
    assert not same_grid(a, c) and not same_grid(a, d)


def test_labels_to_reference_nearest_keeps_values(make_image):
    labels = make_image(np.array([[[0, 1], [2, 3]]] * 2, dtype=np.uint8), spacing=(4.0, 4.0, 4.0),
                        pixel_type=sitk.sitkUInt8)
    ref = make_image(size_xyz=(8, 8, 8), spacing=(1.0, 1.0, 1.0), origin=(-1.5, -1.5, -1.5))
    out = labels_to_reference(labels, ref)
    _assert_exact_grid(out, ref)
    assert set(np.unique(sitk.GetArrayViewFromImage(out))) == {0, 1, 2, 3}


@pytest.mark.parametrize("direction", ["identity", "flipped", "oblique"])
def test_labels_to_a_grid_geometry_equal_labels_to_the_image(make_image, rotation_direction, direction):
    """The pipeline frees the input's voxels and keeps its GridGeometry: same labels, same grid."""
    matrix = {"identity": np.eye(3), "flipped": np.diag([-1.0, 1.0, -1.0]),
              "oblique": np.asarray(rotation_direction("x", 20.0)).reshape(3, 3) @ np.asarray(rotation_direction("z", 35.0)).reshape(3, 3)}[direction]
    ref = make_image(size_xyz=(9, 7, 5), spacing=(0.7, 1.1, 3.0), origin=(-10.3, 4.1, 7.7),
                     direction=tuple(matrix.ravel()))
    rng = np.random.default_rng(1)
    labels = make_image(rng.integers(0, 3, size=(4, 6, 6)).astype(np.uint8), spacing=(1.5, 1.5, 1.5),
                        origin=(-11.0, 3.0, 6.0), pixel_type=sitk.sitkUInt8)
    grid = GridGeometry.of(ref)
    out = labels_to_reference(labels, grid)
    _assert_exact_grid(out, ref)
    from_image = labels_to_reference(labels, ref)  # kept alive: an array view does not own the image
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(out), sitk.GetArrayViewFromImage(from_image))
    with pytest.raises(TumorSegError, match="differs from the grid"):
        grid.apply_to(sitk.Image([2, 2, 2], sitk.sitkUInt8))


def test_crop_uncrop_image(make_image):
    array = np.random.default_rng(0).random((10, 12, 14)).astype(np.float32)
    image = make_image(array, spacing=(0.5, 1.0, 2.0), origin=(1.0, 2.0, 3.0))
    box = bbox_to_slices((2, 3, 4), (5, 6, 3))
    assert box == (slice(4, 7), slice(3, 9), slice(2, 7))
    sub = crop_image(image, box)
    assert np.array_equal(sitk.GetArrayViewFromImage(sub), array[box])
    assert np.allclose(sub.GetOrigin(), image.TransformIndexToPhysicalPoint((2, 3, 4)))
    back = uncrop_image(sub, image, box)
    _assert_exact_grid(back, image)
    expected = np.zeros_like(array)
    expected[box] = array[box]
    assert np.array_equal(sitk.GetArrayViewFromImage(back), expected)
