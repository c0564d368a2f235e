"""Normalization, denoising and foreground cropping."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tumorseg_core.errors import ModelPackageError
from tumorseg_core.imaging.preprocess import (
    crop_to_foreground,
    denoise,
    estimate_noise_sigma,
    foreground_bbox,
    normalize,
    uncrop,
)


def test_ct_window_clips_and_scales():
    array = np.array([-2000, -1000, 0, 500, 1000, 3000], dtype=np.int16).reshape(1, 2, 3)
    out = normalize(array, {"type": "ct", "window": [-1000, 1000]})
    assert out.dtype == np.float32 and out.shape == array.shape
    assert np.allclose(out.ravel(), [0.0, 0.0, 0.5, 0.75, 1.0, 1.0])
    with pytest.raises(ModelPackageError, match="window"):
        normalize(array, {"type": "ct"})
    with pytest.raises(ModelPackageError, match="hi > lo"):
        normalize(array, {"type": "ct", "window": [10, 10]})


def test_zscore_nonzero_keeps_background_zero():
    rng = np.random.default_rng(0)
    array = np.zeros((16, 16, 16), dtype=np.float32)
    array[4:12, 4:12, 4:12] = rng.normal(300.0, 40.0, (8, 8, 8))
    out = normalize(array, {"type": "zscore", "nonzero": True})
    inside = array != 0
    assert np.all(out[~inside] == 0)
    assert abs(out[inside].mean()) < 1e-4 and abs(out[inside].std() - 1.0) < 1e-3
    # Statistics over all voxels differ (background pulls the mean down).
    whole = normalize(array, {"type": "zscore", "nonzero": False})
    assert abs(whole.mean()) < 1e-4 and whole[~inside].max() < 0


def test_zscore_clip_percentiles_limits_outliers():
    array = np.ones((8, 8, 8), dtype=np.float32)
    array[:4] = 2.0
    array[0, 0, 0] = 1e6  # a hot pixel
    clipped = normalize(array, {"type": "zscore", "clip_percentiles": [0.5, 99.5]})
    raw = normalize(array, {"type": "zscore"})
    assert clipped.max() < 5 and raw.max() > 20
    with pytest.raises(ModelPackageError, match="clip_percentiles"):
        normalize(array, {"type": "zscore", "clip_percentiles": [90, 10]})


def test_minmax_none_and_constant_input():
    array = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    out = normalize(array, {"type": "minmax"})
    assert out.min() == 0.0 and out.max() == 1.0 and out.dtype == np.float32
    assert np.array_equal(normalize(array, {"type": "none"}), array.astype(np.float32))
    assert normalize(array, None).dtype == np.float32
    constant = np.full((4, 4, 4), 7.0)
    for scheme in ({"type": "minmax"}, {"type": "zscore"}, {"type": "zscore", "nonzero": True}):
        result = normalize(constant, scheme)
        assert np.all(result == 0) and np.isfinite(result).all()
    assert np.all(normalize(np.zeros((3, 3, 3)), {"type": "zscore", "nonzero": True}) == 0)


def test_normalize_never_returns_nan_and_rejects_unknown():
    array = np.array([1.0, np.nan, np.inf, 3.0], dtype=np.float32).reshape(1, 1, 4)
    for kind in ("zscore", "minmax", "none"):
        assert np.isfinite(normalize(array, {"type": kind})).all()
    with pytest.raises(ModelPackageError, match="unknown"):
        normalize(array, {"type": "histogram"})


def _noisy_cube(make_image):
    rng = np.random.default_rng(1)
    array = np.zeros((24, 24, 24), dtype=np.float32)
    array[6:18, 6:18, 6:18] = 100.0
    return array, make_image(array + rng.normal(0, 20, array.shape).astype(np.float32), spacing=(1.0, 1.0, 1.0))


@pytest.mark.parametrize(
    "scheme",
    [
        {"method": "gaussian", "sigma_mm": 1.0},
        {"method": "curvature_flow", "timestep": 0.0625, "iterations": 5},
        {"method": "nlm", "iterations": 1, "patch_radius": 1},
    ],
)
def test_denoise_reduces_noise_and_keeps_grid(scheme, make_image):
    clean, image = _noisy_cube(make_image)
    out = denoise(image, scheme)
    assert out.GetSize() == image.GetSize() and out.GetOrigin() == image.GetOrigin()
    assert out.GetPixelID() == sitk.sitkFloat32
    before = np.abs(sitk.GetArrayViewFromImage(image) - clean).mean()
    after = np.abs(sitk.GetArrayViewFromImage(out) - clean).mean()
    factor = 0.95 if scheme["method"] == "nlm" else 0.8  # one bounded NLM iteration smooths gently
    assert after < factor * before, f"{scheme['method']}: error {before:.1f} -> {after:.1f}"


def test_estimate_noise_sigma(make_image):
    clean, image = _noisy_cube(make_image)
    assert 17.0 < estimate_noise_sigma(image) < 23.0  # true sigma 20
    assert estimate_noise_sigma(make_image(clean)) < 1e-3


def test_denoise_none_and_bad_scheme(make_image):
    _, image = _noisy_cube(make_image)
    assert denoise(image, None) is image
    assert denoise(image, {"method": None}) is image
    with pytest.raises(ModelPackageError, match="unknown"):
        denoise(image, {"method": "median"})
    with pytest.raises(ModelPackageError, match="sigma_mm"):
        denoise(image, {"method": "gaussian", "sigma_mm": 0})


def test_foreground_bbox_margin_threshold_and_empty():
    array = np.zeros((20, 30, 40), dtype=np.float32)
    array[5:8, 10:12, 30:39] = 1.0
    assert foreground_bbox(array) == (slice(5, 8), slice(10, 12), slice(30, 39))
    assert foreground_bbox(array, margin=2) == (slice(3, 10), slice(8, 14), slice(28, 40))
    assert foreground_bbox(array, margin=(0, 1, 5)) == (slice(5, 8), slice(9, 13), slice(25, 40))
    assert foreground_bbox(np.zeros((4, 5, 6))) == (slice(0, 4), slice(0, 5), slice(0, 6))
    ct = np.full((10, 10, 10), -1000.0)
    ct[2:4, 3:5, 6:9] = 40.0
    assert foreground_bbox(ct, threshold=-500) == (slice(2, 4), slice(3, 5), slice(6, 9))
    stack = np.zeros((2, 10, 10, 10))
    stack[0, 1, 1, 1] = 1
    stack[1, 8, 7, 6] = 1
    assert foreground_bbox(stack) == (slice(1, 9), slice(1, 8), slice(1, 7))


def test_crop_uncrop_restores_shape_and_values():
    rng = np.random.default_rng(2)
    array = np.zeros((3, 16, 18, 20), dtype=np.float32)
    array[:, 4:9, 5:11, 2:7] = rng.random((3, 5, 6, 5))
    cropped, box = crop_to_foreground(array, margin=1)
    assert cropped.shape == (3, 7, 8, 7)
    restored = uncrop(cropped, box, array.shape[-3:])
    assert restored.shape == array.shape and np.array_equal(restored, array)
    labels = (cropped[0] > 0.5).astype(np.uint8)
    full = uncrop(labels, box, array.shape[-3:])
    assert full.dtype == np.uint8 and full.shape == array.shape[1:]
