"""Slice mode of a 2.5D model (inference/slice_mode.py, models/unet25d.py; issue #23 part 4).

A tiny random ``unet25d`` package is built here; the image is oblique, flipped and
anisotropic, so each slice's pixels differ from the model grid's.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from model_factory import make_tiny_25d_package, make_tiny_package

from tumorseg_core.errors import InputError
from tumorseg_core.inference.segmenter import Segmenter
from tumorseg_core.inference.slice_mode import SliceSegmenter
from tumorseg_core.modelpkg.package import open_package

AXES = ("axial", "coronal", "sagittal")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return open_package(make_tiny_25d_package(tmp_path_factory.mktemp("pkg25d") / "tiny25d"))


def _oblique_image(seed: int = 0) -> sitk.Image:
    """An anisotropic (0.9, 1.3, 3.0) mm image, rotated 20 degrees and flipped in y, with blobs."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:11, 0:29, 0:37].astype(np.float32)
    array = rng.normal(0.0, 0.3, (11, 29, 37)).astype(np.float32)
    for cz, cy, cx, r in ((5, 12, 15, 6.0), (3, 20, 28, 4.0)):
        array += 3.0 * (((z - cz) * 3.0) ** 2 + ((y - cy) * 1.3) ** 2 + ((x - cx) * 0.9) ** 2 < r * r * 4)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9, 1.3, 3.0))
    image.SetOrigin((12.5, -40.0, 7.25))
    c, s = np.cos(np.radians(20.0)), np.sin(np.radians(20.0))
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([1.0, -1.0, 1.0])
    image.SetDirection(tuple(rotation.ravel()))
    return image


def _slice(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(array, index, axis=axis)


def test_slice_equals_volume_by_slices_on_the_images_own_grid(package):
    image = _oblique_image()
    slices = SliceSegmenter(package, backend="torch")
    for axis_number, axis in enumerate(AXES):
        volume = sitk.GetArrayFromImage(slices.segment_volume(image, [axis], postprocess_labels=False))
        for index in (0, image.GetSize()[2 - axis_number] // 2, image.GetSize()[2 - axis_number] - 1):
            labels = slices.segment_slice(image, index, axis)
            expected_shape = tuple(n for a, n in enumerate(image.GetSize()[::-1]) if a != axis_number)
            assert labels.shape == expected_shape and labels.dtype == np.uint8
            np.testing.assert_array_equal(labels, _slice(volume, axis_number, index))
        assert 0 < volume.mean() < 1, "the tiny random network should give both labels here"


def test_axial_by_slices_is_the_3d_contract_network(package):
    """On a grid that is the model grid (2 mm, 32 x 32 in-plane) slice mode is the 3D wrapper the
    trainer and the sliding-window predictor run: same channel order and the same edge slices."""
    rng = np.random.default_rng(1)
    array = rng.normal(size=(7, 32, 32)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    slices = SliceSegmenter(package, backend="torch")
    probs = slices.volume_probabilities(image, ["axial"])
    volume, _ = slices.normalized(image)
    net = package.load_networks("cpu")[0].eval()
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(volume[None])), dim=1)[0].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_the_normalized_image_is_cached(package):
    image = _oblique_image()
    slices = SliceSegmenter(package, backend="torch")
    first = slices.segment_slice(image, 4, "axial")
    for index in (0, 3, 7):
        slices.segment_slice(image, index, "axial")
    slices.segment_slice(image, 10, "coronal")
    assert slices.cache_misses == 1
    np.testing.assert_array_equal(slices.segment_slice(image, 4), first)
    changed = sitk.Image(image)
    changed[0, 0, 0] = 50.0  # same grid, other voxels: a new image
    slices.segment_slice(changed, 4)
    assert slices.cache_misses == 2


def test_segmenter_exposes_slice_mode(package, tmp_path, monkeypatch):
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    image = _oblique_image(2)
    segmenter = Segmenter(package, device="cpu", backend="torch")
    torch_labels = segmenter.segment_slice(image, 5, "axial")
    assert segmenter.segment_slice(image, 6, "axial").shape == torch_labels.shape
    assert segmenter.slice_segmenter().cache_misses == 1
    fast = SliceSegmenter(package, backend="onnxruntime")
    np.testing.assert_allclose(fast.slice_probabilities(image, 5, "axial"),
                               segmenter.slice_segmenter().slice_probabilities(image, 5, "axial"), atol=1e-4)


@pytest.mark.parametrize("index, axis, words", [
    (11, "axial", "slice index 11 is outside the image: axial slices are 0..10"),
    (-1, "axial", "slice index -1 is outside the image"),
    (29, "coronal", "coronal slices are 0..28"),
    (2.5, "axial", "slice index must be a whole number"),
    (3, "oblique", "unknown slice axis 'oblique'; use axial, coronal or sagittal"),
    (3, 3, "unknown slice axis 3"),
])
def test_bad_index_or_axis_is_one_line(package, index, axis, words):
    slices = SliceSegmenter(package, backend="torch")
    with pytest.raises(InputError) as info:
        slices.segment_slice(_oblique_image(), index, axis)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_3d_model_is_refused(tmp_path):
    segmenter = Segmenter(open_package(make_tiny_package(tmp_path / "tiny3d")), device="cpu")
    with pytest.raises(InputError, match="slice mode needs a 2.5D model"):
        segmenter.segment_slice(_oblique_image(), 3)


def test_triplanar_labels_on_the_exact_input_grid(tmp_path):
    rules = [{"label": 1, "min_volume_mm3": 20.0, "fill_holes": True}]
    package = open_package(make_tiny_25d_package(tmp_path / "pp", postprocessing=rules))
    image = _oblique_image()
    segmenter = Segmenter(package, device="cpu", backend="torch")
    fused = segmenter.segment_by_slices(image, AXES)
    assert fused.GetSize() == image.GetSize() and fused.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(fused.GetSpacing(), image.GetSpacing(), atol=0)
    np.testing.assert_allclose(fused.GetOrigin(), image.GetOrigin(), atol=0)
    np.testing.assert_allclose(fused.GetDirection(), image.GetDirection(), atol=0)
    slices = segmenter.slice_segmenter()
    mean = np.mean([slices.volume_probabilities(image, [axis]) for axis in AXES], axis=0)
    np.testing.assert_allclose(slices.volume_probabilities(image, AXES), mean, atol=1e-6)
    raw = mean.argmax(axis=0).astype(np.uint8)
    labels = sitk.GetArrayFromImage(fused)
    assert set(np.unique(labels)) <= {0, 1}
    # postprocessing only removes small components and fills holes of the fused argmax
    from tumorseg_core.imaging.postprocess import postprocess_labels

    np.testing.assert_array_equal(labels, postprocess_labels(raw, image.GetSpacing(), rules))
