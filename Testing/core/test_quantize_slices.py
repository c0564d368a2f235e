"""INT8 for a 2.5D model's slice mode (issue #23 parts 1 and 4): ``tumorseg quantize`` on a ``unet25d``.

One tiny random ``unet25d`` package is quantized once per module on two synthetic phantoms.
The tests check the written package, that slice mode (SliceSegmenter, Segmenter, the worker's
``slice`` request) picks the INT8 network on the CPU by itself and float32 on request, that the
INT8 tiles follow the float32 network, and that a tampered graph is refused.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from model_factory import make_tiny_25d_package, tampered_copy

from tumorseg_core.errors import ModelPackageError, TumorSegError
from tumorseg_core.inference.segmenter import Segmenter
from tumorseg_core.inference.slice_mode import SliceSegmenter
from tumorseg_core.modelpkg.package import open_package, sha256_file
from tumorseg_core.synthetic import make_phantom
from tumorseg_core.training import quantize as engine
from tumorseg_core.training.quantize_slices import SliceCalibration

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """(float32 2.5D package, its INT8 package, the QuantizeReport)."""
    root = tmp_path_factory.mktemp("quantize25d")
    fp32 = make_tiny_25d_package(root / "tiny25d")
    report = engine.quantize_package(fp32, root / "tiny25d-int8", calibration="synthetic:2", max_windows=10,
                                     max_dice_drop=1.0)
    return fp32, report.output, report


def _oblique_image(rotation_direction) -> sitk.Image:
    """A phantom on an anisotropic, rotated and flipped grid (LPS)."""
    direction = np.asarray(rotation_direction("z", 20.0)).reshape(3, 3) @ np.diag([1.0, -1.0, 1.0])
    return make_phantom(5, size_xyz=(40, 34, 12), spacing_xyz=(1.3, 1.7, 3.0), direction=tuple(direction.ravel()),
                        modality="mri").image


def test_the_package_holds_one_int8_graph_of_the_centre_slice_network(packages):
    fp32, int8, report = packages
    data = json.loads((int8 / "manifest.json").read_text(encoding="utf-8"))
    assert data["architecture"] == "unet25d"
    assert data["int8"]["networks"] == ["fold0.int8.onnx"] and data["int8"]["window"] == data["patch_size"]
    assert data["files"]["fold0.int8.onnx"] == sha256_file(int8 / "fold0.int8.onnx")
    assert open_package(int8).manifest.int8 is not None
    assert report.windows == 10 and len(report.case_dice) == 2 and report.backend == "openvino"
    from tumorseg_core.models.onnx_network import inspect_onnx

    info = inspect_onnx((int8 / "fold0.int8.onnx").read_bytes(), "graph")
    assert (info.in_channels, *info.spatial_zyx) == (3, 1, 32, 32)  # C * (2k + 1) channels, one 32 x 32 plane


def test_calibration_tiles_are_the_tiles_slice_mode_runs(packages):
    fp32, _, _ = packages
    package = open_package(fp32)
    image = make_phantom(2, size_xyz=(48, 40, 20), spacing_xyz=(2.0, 2.0, 2.0)).image
    calibration = SliceCalibration(package, [[image]], max_windows=6)
    assert len(calibration.windows) == 6
    slicer = SliceSegmenter(package, backend="torch")
    runs = [slicer.slice_tiles(image, i) for i in range(20)]
    for window in calibration.windows:
        assert window.shape == (1, 3, 1, 32, 32) and window.dtype == np.float32
        assert any(np.array_equal(window[0, :, 0], tile) for tiles in runs for tile in tiles)
    assert len({w.tobytes() for w in calibration.windows}) == 6  # spread: no tile twice


def test_slice_mode_picks_int8_on_the_cpu_and_fp32_on_request(packages, rotation_direction):
    _, int8, _ = packages
    package = open_package(int8)
    image = _oblique_image(rotation_direction)
    quantized = SliceSegmenter(package)
    reference = SliceSegmenter(package, precision="fp32")
    p8 = quantized.slice_probabilities(image, 6)
    p32 = reference.slice_probabilities(image, 6)
    assert quantized.precision_used == "int8" and quantized.backend_used in ("openvino", "onnxruntime")
    assert reference.precision_used == "fp32"
    assert p8.shape == p32.shape == (2, 34, 40)
    spread = float(p32.max() - p32.min())
    assert spread > 0.01  # the network responds to its input: a comparison that can fail
    error = np.abs(p8 - p32)
    assert float(error.mean()) < 0.1 * spread and float(error.max()) < 0.5 * spread
    assert np.corrcoef(p8.ravel(), p32.ravel())[0, 1] > 0.95
    torch_side = SliceSegmenter(package, backend="torch")
    torch_side.slice_probabilities(image, 6)
    assert torch_side.precision_used == "fp32"  # auto never runs INT8 with torch
    with pytest.raises(TumorSegError, match="INT8 networks run with openvino or onnxruntime"):
        SliceSegmenter(package, backend="torch", precision="int8").slice_probabilities(image, 6)
    plain = SliceSegmenter(open_package(packages[0]), precision="int8")
    with pytest.raises(TumorSegError, match="no INT8 network.*tumorseg quantize"):
        plain.slice_probabilities(image, 6)


def test_segmenter_and_worker_slice_requests_use_int8_by_themselves(packages, tmp_path, rotation_direction):
    """Slicer's Live mode sends no precision: the worker's slice segmenter picks INT8 on the CPU."""
    from tumorseg_core.worker import Protocol, Worker

    _, int8, _ = packages
    image = _oblique_image(rotation_direction)
    segmenter = Segmenter(str(int8), "cpu")
    labels = segmenter.segment_slice(image, 4, "coronal")
    assert segmenter.slice_segmenter().precision_used == "int8" and labels.shape == (12, 40)
    fp32 = Segmenter(str(int8), "cpu", precision="fp32")
    assert np.array_equal(fp32.segment_slice(image, 4, "coronal").shape, labels.shape)
    assert fp32.slice_segmenter().precision_used == "fp32"

    path = tmp_path / "case.nrrd"
    sitk.WriteImage(image, str(path))
    stream = io.StringIO()
    worker = Worker(Protocol(stream))
    worker.handle({"cmd": "slice", "id": 1, "images": [str(path)], "model": str(int8), "device": "cpu",
                   "axis": "axial", "index": 5, "options": {}})
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert events[-1]["event"] == "slice", events[-1]
    (slicer,) = worker._slicers.values()
    assert slicer.precision_used == "int8"


def test_whole_volumes_of_a_quantized_25d_model_run_float32(packages, rotation_direction):
    """The INT8 graphs are slice mode's 2D network: the 3D sliding window keeps float32 (``auto``) and refuses
    ``int8`` with a one-line reason, on the input's exact grid."""
    _, int8, _ = packages
    image = _oblique_image(rotation_direction)
    segmenter = Segmenter(str(int8), "cpu")
    labels = segmenter.segment(image)
    assert segmenter._predictor.precision == "fp32"
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(labels, get)() == getattr(image, get)()
    with pytest.raises(TumorSegError, match="INT8 network for slice mode only.*--precision auto or fp32"):
        Segmenter(str(int8), "cpu", precision="int8").segment(image)


def test_the_accuracy_check_falls_back_and_refuses_for_25d_models_too(packages, tmp_path, monkeypatch):
    fp32, _, _ = packages
    tries = []

    def poor_agreement(labels, reference, values):
        tries.append([a.shape for a in labels])
        return 0.9

    monkeypatch.setattr(engine, "pooled_agreement", poor_agreement)
    out = tmp_path / "never"
    with pytest.raises(TumorSegError, match=r"Dice 0\.9000 .*nothing written"):
        engine.quantize_package(fp32, out, calibration="synthetic:1", max_windows=4)
    assert len(tries) == 2  # all INT8, then the two finest resolution stages in float32
    assert tries[0] == tries[1] and len(tries[0][0]) == 3  # label maps of whole phantoms, by slices
    assert not out.exists()


def test_tampered_int8_graph_is_refused(packages, tmp_path, rotation_direction):
    _, int8, _ = packages
    bad = tmp_path / "tampered"
    data = tampered_copy(int8, bad, "fold0.int8.onnx")
    with pytest.raises(ModelPackageError, match="fold0.int8.onnx.*sha256"):
        open_package(bad)
    good = tmp_path / "swapped"
    shutil.copytree(int8, good)
    package = open_package(good)
    (good / "fold0.int8.onnx").write_bytes(data)  # swapped after the package was verified
    with pytest.raises(ModelPackageError, match="changed since the package was verified"):
        SliceSegmenter(package).slice_probabilities(_oblique_image(rotation_direction), 3)


def test_slice_speed_benchmark_compares_int8_with_fp32_on_the_same_calls(packages, tmp_path):
    """benchmarks/slice_speed.py --compare-fp32 (smoke: the code path runs and reports both sides; no timing,
    and the random tiny network may find no foreground, so the Dice entry may be empty)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "slice_speed.py"
    spec = importlib.util.spec_from_file_location("bench_slice_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    _, int8, _ = packages
    out = tmp_path / "speed.json"
    bench.main(["--model", str(int8), "-n", "3", "--size", "40", "36", "10", "--spacing", "2", "2", "2",
                "--compare-fp32", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["precision"] == "int8" and result["fp32"]["precision"] == "fp32" and result["calls"] == 3
    assert result["speedup_vs_fp32"] > 0 and set(result["dice_to_fp32"]) <= {"1"}
