"""segment(): geometry round trip through the whole pipeline, multi-input, bad inputs, cancel."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from model_factory import make_tiny_package

from tumorseg_core.errors import CancelledError, InputError
from tumorseg_core.inference.segmenter import Segmenter, segment

GEOMETRIES = {
    "identity": dict(size_xyz=(40, 40, 40), spacing=(1.0, 1.0, 1.0)),
    "lps_flipped_xy": dict(size_xyz=(40, 40, 40), spacing=(1.0, 1.0, 1.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)),
    "flipped_z": dict(size_xyz=(40, 36, 32), spacing=(1.1, 1.0, 1.2), direction=(1, 0, 0, 0, 1, 0, 0, 0, -1)),
    "oblique_30": dict(size_xyz=(40, 40, 40), spacing=(1.0, 1.0, 1.0), direction="oblique"),
    "anisotropic": dict(size_xyz=(56, 56, 10), spacing=(0.7, 0.7, 5.0)),
    "far_origin": dict(size_xyz=(40, 40, 40), spacing=(1.0, 1.0, 1.0), origin=(-1200.0, 800.0, 3000.0)),
}


class ThresholdPredictor:
    """Deterministic stand-in for a network: channel 0 above a threshold is label 1."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def predict(self, volume, progress=None, cancel=None):
        if progress:
            progress(1.0, "threshold")
        return (volume[0] > self.threshold).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory):
    return make_tiny_package(tmp_path_factory.mktemp("pkg") / "tiny")


def physical_centroid(labels: sitk.Image) -> np.ndarray:
    indices = np.argwhere(sitk.GetArrayViewFromImage(labels) > 0)[:, ::-1].mean(axis=0)
    return np.asarray(labels.TransformContinuousIndexToPhysicalPoint([float(i) for i in indices]))


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_round_trip_keeps_exact_grid_and_lesion_position(name, tiny_package, make_sphere_image, rotation_direction):
    geometry = dict(GEOMETRIES[name])
    if geometry.get("direction") == "oblique":
        geometry["direction"] = rotation_direction("z", 30.0)
    image, center = make_sphere_image(radius_mm=9.0, inside=100.0, outside=0.0, **geometry)
    segmenter = Segmenter(tiny_package)
    segmenter._predictor = ThresholdPredictor(threshold=0.5)  # z-scored sphere is >0.5, background <0
    segmenter._predictor_key = (segmenter.manifest.inference.get("overlap", 0.5), False, None)

    result = segmenter.segment(image)

    assert result.GetSize() == image.GetSize()
    assert result.GetSpacing() == image.GetSpacing()
    assert result.GetOrigin() == image.GetOrigin()
    assert result.GetDirection() == image.GetDirection()
    assert result.GetPixelID() == sitk.sitkUInt8
    error = np.abs(physical_centroid(result) - center)
    assert np.all(error <= 0.5 * max(image.GetSpacing())), (name, error)


def test_second_input_on_another_grid_is_resampled_onto_the_first(tmp_path, make_sphere_image, rotation_direction):
    package = make_tiny_package(tmp_path / "two", modalities=("CT", "PET"))
    first, _ = make_sphere_image(size_xyz=(32, 32, 24), spacing=(1.0, 1.0, 1.5))
    second, _ = make_sphere_image(size_xyz=(20, 22, 18), spacing=(2.0, 1.8, 2.0), direction=rotation_direction("x", 20))
    result = segment([first, second], model=str(package), device="cpu")
    assert result.GetSize() == first.GetSize() and result.GetDirection() == first.GetDirection()


def test_wrong_channel_count_is_refused(tiny_package, make_sphere_image):
    image, _ = make_sphere_image()
    with pytest.raises(InputError, match="expects 1 input image"):
        segment([image, image], model=str(tiny_package), device="cpu")


def test_cancel_stops_the_run(tiny_package, make_sphere_image):
    image, _ = make_sphere_image(size_xyz=(48, 48, 48))
    with pytest.raises(CancelledError):
        segment(image, model=str(tiny_package), device="cpu", cancel=lambda: True)


def test_real_network_runs_and_reports_monotone_progress(tiny_package, make_sphere_image):
    image, _ = make_sphere_image(size_xyz=(30, 34, 26), spacing=(1.3, 1.2, 1.6))
    fractions = []
    result = segment(image, model=str(tiny_package), device="cpu", progress=lambda f, m: fractions.append(f))
    assert result.GetSize() == image.GetSize()
    assert set(np.unique(sitk.GetArrayViewFromImage(result))) <= {0, 1}
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_nan_input_is_refused(tiny_package, make_image):
    array = np.zeros((20, 20, 20), np.float32)
    array[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        segment(make_image(array), model=str(tiny_package), device="cpu")


@pytest.mark.parametrize("name", ["lps_flipped_xy", "flipped_z", "oblique_30", "anisotropic"])
@pytest.mark.parametrize("ext", [".nii.gz", ".mha"])
def test_image_files_are_streamed_onto_the_model_grid_with_the_same_result(
        name, ext, tiny_package, make_sphere_image, rotation_direction, tmp_path, monkeypatch):
    """A file is read slab by slab (never whole) and segments like the same image in memory."""
    from tumorseg_core.imaging import stream_resample
    from tumorseg_core.inference import segmenter as pipeline

    geometry = dict(GEOMETRIES[name])
    if geometry.get("direction") == "oblique":
        geometry["direction"] = rotation_direction("z", 30.0)
    image, _ = make_sphere_image(radius_mm=9.0, inside=100.0, outside=0.0, noise=5.0, **geometry)
    path = tmp_path / f"image{ext}"
    sitk.WriteImage(image, str(path))
    image = sitk.ReadImage(str(path))  # as stored (NIfTI keeps float32 geometry)
    segmenter = Segmenter(tiny_package, device="cpu")
    expected = segmenter.segment(image)

    real = stream_resample.read_to_model_grid
    slabbed = []
    monkeypatch.setattr(stream_resample, "read_to_model_grid",
                        lambda *a, **k: slabbed.append(a[0]) or real(*a, **{**k, "slab_voxels": 3 * 40 * 40}))
    monkeypatch.setattr(pipeline, "read_images", lambda items: pytest.fail("the whole image was read"))
    result = segmenter.segment(str(path))
    assert slabbed == [str(path)]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), sitk.GetArrayFromImage(expected))
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(result, get)() == getattr(image, get)()


def test_files_on_different_grids_and_unstreamable_files_take_the_whole_image_path(
        tmp_path, make_sphere_image, rotation_direction, monkeypatch):
    from tumorseg_core.inference import segmenter as pipeline

    package = make_tiny_package(tmp_path / "two", modalities=("CT", "PET"))
    first, _ = make_sphere_image(size_xyz=(32, 32, 24), spacing=(1.0, 1.0, 1.5))
    second, _ = make_sphere_image(size_xyz=(20, 22, 18), spacing=(2.0, 1.8, 2.0), direction=rotation_direction("x", 20))
    paths = [tmp_path / "ct.nii.gz", tmp_path / "pet.nii.gz", tmp_path / "ct.nrrd"]
    for image, path in zip((first, second, first), paths):
        sitk.WriteImage(image, str(path))
    whole = []
    real = pipeline.read_images
    monkeypatch.setattr(pipeline, "read_images", lambda items, **kw: whole.append(len(items)) or real(items, **kw))
    segmenter = Segmenter(package, device="cpu")
    assert segmenter.segment([str(paths[0]), str(paths[1])]).GetSize() == first.GetSize()
    assert segmenter.segment([str(paths[2]), str(paths[0])]).GetSize() == first.GetSize()  # NRRD: no slabs
    assert whole == [2, 2]
    segmenter.segment([str(paths[0]), str(paths[0])])  # one grid: streamed
    assert whole == [2, 2]


def test_nan_in_a_streamed_file_is_refused_without_output(tiny_package, tmp_path):
    array = np.ones((20, 20, 20), np.float32)
    array[13, 4, 5] = np.nan
    path = tmp_path / "nan.mha"  # ITK's NIfTI reader turns NaN into 0 on its own; MetaImage keeps it
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(InputError, match="1 NaN and 0 Inf"):
        segment(str(path), model=str(tiny_package), device="cpu")


def test_load_builds_the_networks_before_the_first_case():
    from tumorseg_core.inference.segmenter import Segmenter

    segmenter = Segmenter("default", "cpu", backend="torch")
    assert segmenter._predictor is None
    assert segmenter.load() is segmenter and segmenter._predictor is not None
    assert segmenter._predictor.backend == "torch"
