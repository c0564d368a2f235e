"""Voxel-wise uncertainty (issue #22): the normalised predictive entropy beside the label map.

Engine: ``inference/uncertainty.py`` (entropy, grids, paths), the stitcher and Predictor
(``predict_with_uncertainty``), ``Segmenter.segment(..., uncertainty=True)``,
``segment_to_file(..., uncertainty_path=...)`` and the worker's ``"uncertainty": true``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")

from model_factory import make_tiny_package  # noqa: E402

import tumorseg_core  # noqa: E402
from tumorseg_core.errors import InputError, TumorSegError  # noqa: E402
from tumorseg_core.imaging.geometry import GridGeometry  # noqa: E402
from tumorseg_core.inference import segmenter as segmenter_module  # noqa: E402
from tumorseg_core.inference.predictor import Predictor  # noqa: E402
from tumorseg_core.inference.segmenter import Segmenter  # noqa: E402
from tumorseg_core.inference.uncertainty import (  # noqa: E402
    SegmentResult,
    entropy_from_sums,
    entropy_of_probabilities,
    seeded_uncertainty_error,
    to_reference,
)

ROOT = Path(__file__).resolve().parents[2]


def _reference_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy over axis 0 of full class probabilities, divided by log K (float64, written out)."""
    p = probs.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=0) / math.log(len(p))


def _oblique_flipped(rotation_direction) -> tuple[float, ...]:
    """A rotated grid whose y axis is also flipped (determinant -1)."""
    rotation = np.asarray(rotation_direction("z", 25.0)).reshape(3, 3) @ np.asarray(rotation_direction("x", 10.0)
                                                                                   ).reshape(3, 3)
    return tuple((rotation @ np.diag([1.0, -1.0, 1.0])).ravel().tolist())


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return make_tiny_package(tmp_path_factory.mktemp("pkg") / "tiny", seed=3)


@pytest.fixture()
def oblique_case(make_sphere_image, rotation_direction):
    image, _ = make_sphere_image(radius_mm=7.0, noise=8.0, size_xyz=(28, 22, 10), spacing=(0.9, 1.3, 3.1),
                                 origin=(5.0, -12.0, 30.0), direction=_oblique_flipped(rotation_direction))
    return image


# ----------------------------------------------------------------------------- the measure


def test_entropy_matches_the_written_out_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (3, 4, 5, 6))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    probs[:, 0, 0, 0] = (1.0, 0.0, 0.0)  # certain
    probs[:, 0, 0, 1] = 1.0 / 3  # uniform
    weight = rng.uniform(0.5, 2.0, probs.shape[1:]).astype(np.float32)
    from_sums = entropy_from_sums((probs[1:] * weight).astype(np.float32), weight, "softmax", 3)
    np.testing.assert_allclose(from_sums, _reference_entropy(probs), atol=2e-5)
    assert from_sums[0, 0, 0] == 0.0 and from_sums[0, 0, 1] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(entropy_of_probabilities(probs, "softmax"), _reference_entropy(probs), atol=2e-5)
    # Sigmoid regions: the mean binary entropy; no window at all: 0.
    regions = probs[:2]
    binary = np.mean([_reference_entropy(np.stack([1 - r, r])) for r in regions], axis=0)
    np.testing.assert_allclose(entropy_of_probabilities(regions, "sigmoid"), binary, atol=2e-5)
    weight[1, 2, 3] = 0.0
    assert entropy_from_sums((regions * weight).astype(np.float32), weight, "sigmoid", 2)[1, 2, 3] == 0.0


# ----------------------------------------------------------------------------- the Predictor


class _EdgeNet(torch.nn.Module):
    """Tumour logit ``sign * 10 * (I[x+1] - I[x-1]) - 5``: sure of a rising edge, not of a falling one.

    A flip along x turns a rising edge into a falling one, so the flip passes of TTA (or two
    networks of opposite ``sign``) disagree exactly on the edge.
    """

    def __init__(self, sign: float = 1.0) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, (1, 1, 3), padding=(0, 0, 1), padding_mode="replicate")
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[1, 0, 0, 0, 0] = -10.0 * sign
            self.conv.weight[1, 0, 0, 0, 2] = 10.0 * sign
            self.conv.bias[1] = -5.0

    def forward(self, x):
        return self.conv(x)


def _edge_volume() -> tuple[np.ndarray, np.ndarray]:
    """(1, z, y, x) volume with a step along x at x = 10, and the (z, y, x) mask of its edge voxels."""
    volume = np.zeros((1, 6, 6, 20), dtype=np.float32)
    volume[..., 10:] = 1.0
    edge = np.zeros(volume.shape[1:], dtype=bool)
    edge[..., 9:11] = True
    return volume, edge


def _predictor(networks, tta: bool) -> Predictor:
    return Predictor(networks, (6, 6, 8), num_outputs=2, device="cpu", backend="torch", tta=tta, overlap=0.5,
                     in_channels=1)


@pytest.mark.parametrize("case", ["tta", "ensemble"])
def test_uncertainty_is_high_where_the_passes_disagree(case):
    volume, edge = _edge_volume()
    one_pass = _predictor([_EdgeNet()], tta=False)
    labels_1, entropy_1 = one_pass.predict_with_uncertainty(volume)
    disagreeing = _predictor([_EdgeNet()], tta=True) if case == "tta" else \
        _predictor([_EdgeNet(1.0), _EdgeNet(-1.0)], tta=False)
    labels_n, entropy_n = disagreeing.predict_with_uncertainty(volume)
    assert labels_1[edge].all() and entropy_1[edge].max() < 0.1  # one pass is sure of the edge
    assert entropy_n[edge].min() > 0.9  # the passes disagree there: near-uniform mean
    assert entropy_n[~edge].max() < 0.1 and entropy_1[~edge].max() < 0.1  # flat: all passes say background
    assert entropy_n.dtype == np.float32 and entropy_n.shape == volume.shape[1:]


def test_predictor_uncertainty_is_the_entropy_of_its_probabilities_and_keeps_the_labels():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 3, padding=1))
    volume = np.random.default_rng(1).normal(size=(1, 9, 13, 17)).astype(np.float32)
    predictor = Predictor([net], (8, 8, 8), num_outputs=3, device="cpu", backend="torch", tta=True, overlap=0.5,
                          in_channels=1)
    labels, entropy = predictor.predict_with_uncertainty(volume)
    assert np.array_equal(labels, predictor.predict(volume))  # bit-identical labels
    foreground = predictor.predict_probabilities(volume)
    full = np.concatenate([1.0 - foreground.sum(0, keepdims=True), foreground])
    np.testing.assert_allclose(entropy, _reference_entropy(full), atol=1e-4)
    assert 0.0 <= entropy.min() and entropy.max() <= 1.0 and entropy.std() > 0.01


# ----------------------------------------------------------------------------- the Segmenter


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return GridGeometry.of(a) == GridGeometry.of(b)


@pytest.mark.parametrize("options", [{}, {"tta": True, "cascade": True}])
def test_segment_returns_labels_and_uncertainty_on_the_input_grid(package, oblique_case, options):
    segmenter = Segmenter(str(package), "cpu")
    plain = segmenter.segment(oblique_case, **options)
    result = segmenter.segment(oblique_case, uncertainty=True, **options)
    assert isinstance(plain, sitk.Image) and isinstance(result, SegmentResult)
    labels, uncertainty = result
    assert np.array_equal(sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(plain))
    assert _same_grid(labels, oblique_case) and _same_grid(uncertainty, oblique_case)  # bit-exact geometry
    assert uncertainty.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayViewFromImage(uncertainty)
    assert values.min() >= 0.0 and values.max() <= 1.0 and values.std() > 0.0


def test_uncertainty_is_the_model_grid_entropy_brought_back_linearly(package, oblique_case):
    segmenter = Segmenter(str(package), "cpu")
    _, uncertainty = segmenter.segment(oblique_case, uncertainty=True)
    volume, model_grid, reference = segmenter.prepare(oblique_case)
    foreground = segmenter.predictor(segmenter.options).predict_probabilities(volume)
    entropy = entropy_of_probabilities(np.concatenate([1.0 - foreground, foreground]), "softmax")
    expected = to_reference(entropy, model_grid, reference)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(uncertainty), sitk.GetArrayViewFromImage(expected),
                               atol=1e-4)


def test_api_door_and_bad_request(package, oblique_case):
    result = tumorseg_core.segment(oblique_case, model=str(package), device="cpu", uncertainty=True)
    assert isinstance(result, SegmentResult) and _same_grid(result.uncertainty, oblique_case)
    assert isinstance(tumorseg_core.segment(oblique_case, model=str(package), device="cpu"), sitk.Image)
    with pytest.raises(InputError, match="uncertainty must be true or false"):
        Segmenter(str(package), "cpu").segment(oblique_case, uncertainty="yes")
    error = seeded_uncertainty_error()
    assert isinstance(error, InputError) and "\n" not in str(error) and "model" in str(error)


def test_segment_to_file_writes_both(package, oblique_case, tmp_path):
    segmenter = Segmenter(str(package), "cpu")
    labels = segmenter.segment_to_file(oblique_case, tmp_path / "labels.seg.nrrd",
                                       uncertainty_path=tmp_path / "uncertainty.nii.gz")
    written = sitk.ReadImage(str(tmp_path / "uncertainty.nii.gz"))
    assert written.GetPixelID() == sitk.sitkFloat32 and written.GetSize() == oblique_case.GetSize()
    np.testing.assert_allclose(written.GetDirection(), oblique_case.GetDirection(), atol=1e-6)
    _, expected = segmenter.segment(oblique_case, uncertainty=True)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(expected))
    assert np.array_equal(sitk.GetArrayViewFromImage(sitk.ReadImage(str(tmp_path / "labels.seg.nrrd"))),
                          sitk.GetArrayViewFromImage(labels))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.seg.nrrd", "uncertainty.nii.gz"]  # no temp files


@pytest.mark.parametrize("bad, message", [
    ("missing/u.nrrd", "does not exist"),
    ("u.mhd", "unknown extension"),
    ("labels.nrrd", "different names"),
])
def test_segment_to_file_refuses_a_bad_uncertainty_path_before_inference(package, oblique_case, tmp_path, bad,
                                                                         message):
    calls = []
    with pytest.raises(InputError, match=message):
        Segmenter(str(package), "cpu").segment_to_file(oblique_case, tmp_path / "labels.nrrd",
                                                       progress=lambda f, m: calls.append(m),
                                                       uncertainty_path=tmp_path / bad)
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_segment_to_file_leaves_nothing_when_the_label_map_fails(package, oblique_case, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise TumorSegError("could not write labels.nrrd: no space left on device; free space")

    monkeypatch.setattr(segmenter_module, "write_labelmap", fail)
    with pytest.raises(TumorSegError, match="no space left"):
        Segmenter(str(package), "cpu").segment_to_file(oblique_case, tmp_path / "labels.nrrd",
                                                       uncertainty_path=tmp_path / "u.nrrd")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the worker


def test_worker_round_trip(package, oblique_case, tmp_path):
    source = tmp_path / "input.nrrd"
    sitk.WriteImage(oblique_case, str(source))
    work = tmp_path / "run"
    work.mkdir()
    request = {"cmd": "segment", "images": [str(source)], "output": str(work / "labels.nrrd"), "model": str(package),
               "device": "cpu"}
    lines = [dict(request, id=1, uncertainty=True), dict(request, id=2, uncertainty="yes"), {"cmd": "shutdown"}]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tumorseg_core.worker"], input="".join(json.dumps(r) + "\n"
                          for r in lines), capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = {e.get("id"): e for e in map(json.loads, proc.stdout.splitlines()) if e["event"] in ("done", "error")}
    assert events[1]["event"] == "done" and events[1]["uncertainty"] == str(work / "uncertainty.nrrd")
    assert events[2]["event"] == "error" and "'uncertainty' must be true or false" in events[2]["message"]
    uncertainty = sitk.ReadImage(events[1]["uncertainty"])
    labels = sitk.ReadImage(events[1]["output"])
    assert uncertainty.GetPixelID() == sitk.sitkFloat32 and uncertainty.GetSize() == labels.GetSize()
    np.testing.assert_allclose(uncertainty.GetOrigin(), oblique_case.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(uncertainty.GetSpacing(), oblique_case.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(uncertainty.GetDirection(), oblique_case.GetDirection(), atol=1e-9)
    assert sorted(p.name for p in work.iterdir()) == ["labels.nrrd", "uncertainty.nrrd"]


# ----------------------------------------------------------------------------- imported models


def test_imported_monai_bundle_gives_the_entropy_of_its_probabilities(tmp_path, monkeypatch, make_sphere_image,
                                                                       rotation_direction):
    pytest.importorskip("monai")
    from test_monai_import import SMALL_SPLEEN, SPLEEN_META, _bundle

    from tumorseg_core.modelpkg import monai_import

    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    package = monai_import.import_bundle(_bundle(tmp_path, SMALL_SPLEEN, SPLEEN_META, seed=11), tmp_path / "pkg")
    image, _ = make_sphere_image(radius_mm=12.0, inside=200.0, outside=-50.0, noise=30.0, size_xyz=(40, 36, 20),
                                 spacing=(1.2, 0.9, 2.5), direction=_oblique_flipped(rotation_direction))
    segmenter = Segmenter(str(package), "cpu")
    labels, uncertainty = segmenter.segment(image, uncertainty=True)
    assert np.array_equal(sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(segmenter.segment(image)))
    assert _same_grid(uncertainty, image) and uncertainty.GetPixelID() == sitk.sitkFloat32
    probabilities, _ = segmenter.probabilities(image)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(uncertainty),
                               _reference_entropy(np.clip(probabilities, 0, 1)), atol=1e-4)
    assert sitk.GetArrayViewFromImage(uncertainty).max() > 0.1  # not a trivially certain output


# ----------------------------------------------------------------------------- the benchmark


def test_calibration_benchmark_measures_a_case(package):
    import importlib.util

    from tumorseg_core.synthetic import make_phantom

    spec = importlib.util.spec_from_file_location("bench_uncertainty", ROOT / "benchmarks" / "uncertainty_calibration.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    phantom = make_phantom(7, size_xyz=(30, 28, 16), spacing_xyz=(2.0, 2.0, 3.0), n_lesions=1,
                           lesion_radius_mm=(8.0, 9.0))
    result = bench.run_case(Segmenter(str(package), "cpu"), phantom, tta=False, band_mm=10.0)
    assert 0 <= result["caught_uncertainty"] <= result["wrong_in_band"] == result["wrong_voxels"]
    assert sum(result["bins_all"]["count"]) == np.prod(phantom.image.GetSize())
    summary = bench.summarize({"case_00:single": result}, "single")
    assert 0.0 <= summary["ece_all"] <= 1.0 and summary["cases"] == 1
    # AUROC and ECE against their definitions on a small known case.
    assert bench.auroc(np.array([0.1, 0.3, 0.4, 0.8]), np.array([False, True, False, True])) == 0.75
    bins = bench.calibration_bins(np.array([0.05, 0.05, 0.95, 0.95]), np.array([0, 1, 1, 1]))
    assert bench.ece(bins) == pytest.approx(0.5 * abs(0.5 - 0.05) + 0.5 * abs(1.0 - 0.95))
