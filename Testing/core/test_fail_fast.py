"""Everything that can be checked before inference fails before any network is built (issue #21 part 3).

A seed or background point outside the image, an unwritable output, a wrong number of
inputs: each used to surface only after the whole inference. Each test counts the
networks built (``Predictor.from_package``/``for_cascade``, ``ModelPackage.load_networks``):
none may be.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from model_factory import make_tiny_package

from tumorseg_core import cli
from tumorseg_core.errors import InputError, TumorSegError
from tumorseg_core.imaging import io
from tumorseg_core.imaging.geometry import GridGeometry
from tumorseg_core.inference.predictor import Predictor
from tumorseg_core.inference.segmenter import Segmenter
from tumorseg_core.modelpkg.package import ModelPackage
from tumorseg_core.options import SegmentOptions

FLIPPED = (-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)  # x flipped, y and z swapped


@pytest.fixture
def builds(monkeypatch):
    """A list that records every attempt to build or load a network."""
    calls: list[str] = []

    def record(name):
        def refuse(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called: a network was built before the input checks")
        return refuse

    monkeypatch.setattr(Predictor, "from_package", classmethod(lambda cls, *a, **k: record("from_package")()))
    monkeypatch.setattr(Predictor, "for_cascade", classmethod(lambda cls, *a, **k: record("for_cascade")()))
    monkeypatch.setattr(ModelPackage, "load_networks", lambda self, *a, **k: record("load_networks")())
    return calls


@pytest.fixture
def case(tmp_path, make_sphere_image):
    image, centre = make_sphere_image(radius_mm=6, size_xyz=(20, 18, 12), spacing=(1.1, 0.9, 2.5),
                                      origin=(10.0, -20.0, 5.0), direction=FLIPPED)
    path = tmp_path / "case.mha"
    sitk.WriteImage(image, str(path))
    return path, image, centre


@pytest.mark.parametrize("option", ["seeds_lps", "background_lps"])
def test_point_outside_the_image_fails_before_any_network(case, builds, option):
    path, _, centre = case
    outside = tuple(np.asarray(centre) + (0.0, 0.0, 500.0))
    with pytest.raises(InputError, match="lies outside the image"):
        Segmenter("default").segment(path, **{option: [outside]})
    assert builds == []


def test_point_outside_an_in_memory_image_fails_before_any_network(case, builds):
    _, image, centre = case
    with pytest.raises(InputError, match="outside the image"):
        Segmenter("default").segment(image, seeds_lps=[tuple(np.asarray(centre) - (300.0, 0.0, 0.0))])
    assert builds == []


def test_point_outside_a_dicom_free_read_is_checked_after_reading(case, builds, monkeypatch):
    """Where no header gives the grid first (e.g. a DICOM folder), the read grid is checked before the model."""
    from tumorseg_core.inference import input_checks

    path, _, centre = case
    monkeypatch.setattr(input_checks, "first_grid", lambda items: None)
    with pytest.raises(InputError, match="outside the image"):
        Segmenter("default").segment(path, seeds_lps=[tuple(np.asarray(centre) + (0.0, 400.0, 0.0))])
    assert builds == []


def test_point_outside_the_model_field_of_view():
    from tumorseg_core.inference import input_checks

    image_grid = GridGeometry((10, 10, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    model_grid = GridGeometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    input_checks.check_points(SegmentOptions(seeds_lps=((3.4, 1.0, 2.0),)), image_grid, model_grid)
    with pytest.raises(InputError, match="outside the region the model sees"):
        input_checks.check_points(SegmentOptions(seeds_lps=((6.0, 1.0, 2.0),)), image_grid, model_grid)


def test_output_folder_in_the_way_fails_before_any_network(case, builds, tmp_path):
    path, _, _ = case
    (tmp_path / "labels.nii.gz").mkdir()
    with pytest.raises(TumorSegError, match="is a folder"):
        Segmenter("default").segment_to_file(path, tmp_path / "labels.nii.gz")
    assert builds == []


def test_cli_unwritable_output_fails_before_any_network(case, builds, tmp_path, capsys):
    path, _, _ = case
    (tmp_path / "labels.seg.nrrd").mkdir()
    assert cli.main(["segment", str(path), "-o", str(tmp_path / "labels.seg.nrrd")]) == 2
    assert capsys.readouterr().err.startswith("error: output")
    assert builds == []


def test_cli_seed_outside_with_a_model_fails_before_any_network(case, builds, tmp_path, capsys):
    path, _, centre = case
    seed = ",".join(str(float(c)) for c in np.asarray(centre) + (0.0, 0.0, -900.0))
    assert cli.main(["segment", str(path), "-o", str(tmp_path / "o.nii.gz"), "--model", "default",
                     "--seed", seed]) == 2
    assert "outside the image" in capsys.readouterr().err
    assert builds == [] and not (tmp_path / "o.nii.gz").exists()


def test_wrong_input_count_fails_before_reading_voxels(case, builds, monkeypatch):
    path, _, _ = case
    reads = []
    monkeypatch.setattr(sitk, "ReadImage", lambda *a, **k: reads.append(a))
    with pytest.raises(InputError, match="expects 1 input image"):
        Segmenter("default").segment([path, path])
    assert builds == [] and reads == []


@pytest.fixture(scope="module")
def two_channel_model(tmp_path_factory):
    return make_tiny_package(tmp_path_factory.mktemp("models") / "two", modalities=("T1", "T2"))


def test_too_few_channels_fails_before_any_network(case, builds, two_channel_model):
    path, _, _ = case
    with pytest.raises(InputError, match="expects 2 input image"):
        Segmenter(two_channel_model).segment(path)
    assert builds == []


def test_4d_file_is_split_into_the_model_channels(case, two_channel_model, tmp_path):
    _, image, _ = case
    second = sitk.Cast(image * 0.5 + 3.0, image.GetPixelID())
    four_d = tmp_path / "both.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([image, second]), str(four_d))
    segmenter = Segmenter(two_channel_model, "cpu")
    joined = segmenter.segment(four_d)
    channels = io.read_channels(four_d)  # the same voxels and grid, given as two 3D images
    separate = segmenter.segment(channels)
    assert joined.GetSize() == image.GetSize()
    for got, want in ((joined.GetSpacing(), image.GetSpacing()), (joined.GetOrigin(), image.GetOrigin()),
                      (joined.GetDirection(), image.GetDirection())):
        assert got == pytest.approx(want, abs=1e-5)
    assert GridGeometry.of(joined) == GridGeometry.of(channels[0])
    assert np.array_equal(sitk.GetArrayViewFromImage(joined), sitk.GetArrayViewFromImage(separate))
