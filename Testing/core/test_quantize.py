"""INT8 post-training quantization (issue #23 part 1): ``tumorseg quantize`` and ``precision``.

One tiny package (Testing/core/model_factory.py) is quantized once per module on two
small synthetic phantoms; the tests then check the written package (hashed, listed,
verified), the INT8 networks' agreement with float32, the precision choice of every door,
a tampered INT8 file, a package without INT8 networks, and the CLI's one-line errors.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from cli_helpers import one_error_line, run_cli
from model_factory import make_tiny_package, tampered_copy

from tumorseg_core.commands import quantize as quantize_command
from tumorseg_core.errors import InputError, ModelPackageError, TumorSegError
from tumorseg_core.inference.backends.int8 import int8_wanted
from tumorseg_core.inference.predictor import Predictor
from tumorseg_core.inference.segmenter import Segmenter
from tumorseg_core.modelpkg.manifest import Manifest
from tumorseg_core.modelpkg.package import open_package, sha256_file
from tumorseg_core.options import PRECISIONS, SegmentOptions
from tumorseg_core.synthetic import make_phantom
from tumorseg_core.training import quantize as engine

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """(float32 package, its INT8 package, the QuantizeReport)."""
    root = tmp_path_factory.mktemp("quantize")
    fp32 = make_tiny_package(root / "tiny", seed=3)
    report = engine.quantize_package(fp32, root / "tiny-int8", calibration="synthetic:2", max_windows=12)
    return fp32, report.output, report


def _oblique_case(rotation_direction):
    """A phantom on an anisotropic, rotated and flipped grid (LPS)."""
    direction = np.asarray(rotation_direction("z", 25.0)).reshape(3, 3) @ np.diag([1.0, -1.0, 1.0])
    return make_phantom(7, size_xyz=(30, 26, 22), spacing_xyz=(1.7, 2.3, 2.9), direction=tuple(direction.ravel()),
                        modality="mri").image


def test_quantize_writes_a_verified_package_with_the_int8_section(packages):
    fp32, int8, report = packages
    data = json.loads((int8 / "manifest.json").read_text(encoding="utf-8"))
    section = data["int8"]
    assert section["networks"] == ["fold0.int8.onnx"]
    assert section["window"] == data["patch_size"]
    assert section["calibration"] == "synthetic:2" and section["max_dice_drop"] == 0.02
    assert section["dice_to_fp32"] == pytest.approx(report.dice_to_fp32, abs=1e-6)
    assert data["files"]["fold0.int8.onnx"] == sha256_file(int8 / "fold0.int8.onnx")
    source = json.loads((fp32 / "manifest.json").read_text(encoding="utf-8"))
    assert data["format_version"] == source["format_version"]  # optional section, no format bump
    for name, digest in source["files"].items():  # every file of the source, unchanged
        assert data["files"][name] == digest
    package = open_package(int8)
    assert package.manifest.int8.networks == ("fold0.int8.onnx",)
    import onnx

    graph = onnx.load_model_from_string(package.read_verified("fold0.int8.onnx"))
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert report.windows == 12 and len(report.case_dice) == 2 and report.backend in ("openvino", "onnxruntime")


def test_int8_probabilities_follow_float32(packages):
    """The INT8 graph computes the float32 network's probabilities, up to quantization error."""
    fp32, int8, _ = packages
    package = open_package(int8)
    segmenter = Segmenter(package, "cpu")
    volume = segmenter.prepare(make_phantom(11, size_xyz=(24, 24, 24), spacing_xyz=(2.0, 2.0, 2.0),
                                            modality="ct").image)[0]
    quantized = Predictor.from_package(package, "cpu", backend="auto")
    reference = Predictor.from_package(package, "cpu", backend="auto", precision="fp32")
    assert quantized.precision == "int8" and reference.precision == "fp32"
    p8, p32 = quantized.predict_probabilities(volume), reference.predict_probabilities(volume)
    assert p8.shape == p32.shape
    spread = float(p32.max() - p32.min())
    assert spread > 0.01  # the network responds to its input: a comparison that can fail
    error = np.abs(p8 - p32)
    assert float(error.mean()) < 0.1 * spread and float(error.max()) < 0.5 * spread
    assert np.corrcoef(p8.ravel(), p32.ravel())[0, 1] > 0.95
    labels8, labels32 = quantized.predict(volume), reference.predict(volume)
    assert engine.label_agreement(labels8, labels32, [1]) >= 0.98


def test_segment_picks_int8_on_the_cpu_and_fp32_on_request(packages, rotation_direction):
    _, int8, _ = packages
    image = _oblique_case(rotation_direction)
    segmenter = Segmenter(str(int8), "cpu")
    labels = segmenter.segment(image)
    assert segmenter._predictor.precision == "int8"
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(labels, get)() == getattr(image, get)()
    labels32 = segmenter.segment(image, precision="fp32")
    assert segmenter._predictor.precision == "fp32" and segmenter._predictor.backend == "openvino"
    a, b = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(labels32)
    assert engine.label_agreement(a, b, [1]) >= 0.98
    assert Segmenter(str(int8), "cpu", backend="torch").predictor(SegmentOptions(backend="torch")).precision == "fp32"


def test_cli_precision_flag_reaches_the_options():
    from tumorseg_core.cli import build_parser
    from tumorseg_core.commands.segment_options import segment_options

    args = build_parser().parse_args(["segment", "x.nii.gz", "-o", "y.nii.gz", "--precision", "fp32"])
    assert segment_options(args).precision == "fp32"
    assert PRECISIONS == ("auto", "fp32", "int8") and SegmentOptions().precision == "auto"
    with pytest.raises(TumorSegError, match="unknown precision"):
        SegmentOptions(precision="int4")


def test_precision_choice():
    assert int8_wanted("auto", True, "cpu", "auto") is True
    assert int8_wanted("auto", True, "cpu", "openvino") is True
    assert int8_wanted("auto", True, "cuda:0", "auto") is False  # a GPU keeps float32 / AMP
    assert int8_wanted("auto", True, "cpu", "torch") is False
    assert int8_wanted("auto", False, "cpu", "auto") is False
    assert int8_wanted("fp32", True, "cpu", "auto") is False
    for args, words in [(("int8", False, "cpu", "auto"), "no INT8 network"),
                        (("int8", True, "cuda", "auto"), "run on the CPU"),
                        (("int8", True, "cpu", "torch"), "openvino or onnxruntime")]:
        with pytest.raises(TumorSegError, match=words) as info:
            int8_wanted(*args)
        assert "\n" not in str(info.value)


def test_package_without_int8_keeps_working_in_fp32(packages, tmp_path):
    fp32, _, _ = packages
    before = {p.name: sha256_file(p) for p in fp32.iterdir()}
    package = open_package(fp32)
    assert package.manifest.int8 is None
    assert Predictor.from_package(package, "cpu", backend="auto").precision == "fp32"
    segmenter = Segmenter(str(fp32), "cpu", precision="int8")
    image = make_phantom(2, size_xyz=(20, 20, 20), spacing_xyz=(2.0, 2.0, 2.0)).image
    with pytest.raises(TumorSegError, match="no INT8 network"):
        segmenter.segment(image)
    path, out = tmp_path / "case.nii.gz", tmp_path / "labels.nii.gz"
    sitk.WriteImage(image, str(path))
    error = one_error_line(run_cli("segment", str(path), "-o", str(out), "--model", str(fp32), "--device", "cpu",
                                   "--precision", "int8"))
    assert "no INT8 network" in error and "tumorseg quantize" in error and not out.exists()
    assert {p.name: sha256_file(p) for p in fp32.iterdir()} == before  # quantize never touches its source


def test_tampered_int8_file_is_refused_and_nothing_is_written(packages, tmp_path):
    _, int8, _ = packages
    bad = tmp_path / "tampered"
    data = tampered_copy(int8, bad, "fold0.int8.onnx")
    with pytest.raises(ModelPackageError, match="fold0.int8.onnx.*sha256"):
        open_package(bad)
    image = tmp_path / "case.nii.gz"
    sitk.WriteImage(make_phantom(4, size_xyz=(20, 20, 20), spacing_xyz=(2.0, 2.0, 2.0)).image, str(image))
    out = tmp_path / "labels.nii.gz"
    error = one_error_line(run_cli("segment", str(image), "-o", str(out), "--model", str(bad), "--device", "cpu"))
    assert "fold0.int8.onnx" in error and "sha256" in error and not out.exists()
    # swapped after the package was opened and verified: refused when the graph is loaded
    good = tmp_path / "swapped"
    shutil.copytree(int8, good)
    package = open_package(good)
    (good / "fold0.int8.onnx").write_bytes(data)
    with pytest.raises(ModelPackageError, match="changed since the package was verified"):
        Predictor.from_package(package, "cpu", backend="auto")


def test_manifest_int8_section_is_validated(packages):
    _, int8, _ = packages
    data = json.loads((int8 / "manifest.json").read_text(encoding="utf-8"))
    Manifest(data)
    broken = [
        ({"networks": []}, "one ONNX file per ensemble"),
        ({"networks": ["missing.onnx"]}, "not an .onnx file that 'files' lists"),
        ({"window": [8, 8, 8]}, "must equal patch_size"),
        ({"dice_to_fp32": 1.5}, "from 0 to 1"),
        ({"colour": "red"}, "unknown"),
    ]
    for change, words in broken:
        bad = json.loads(json.dumps(data))
        bad["int8"].update(change)
        with pytest.raises(ModelPackageError, match=words):
            Manifest(bad)
    old = json.loads(json.dumps(data))
    del old["int8"]
    assert Manifest(old).int8 is None  # the section is optional


def test_refused_when_the_dice_drop_exceeds_the_budget(packages, tmp_path, monkeypatch):
    fp32, _, _ = packages
    tries = []

    def poor_agreement(labels, reference, values):
        tries.append(len(labels))
        return 0.9

    monkeypatch.setattr(engine, "pooled_agreement", poor_agreement)
    out = tmp_path / "never"
    with pytest.raises(InputError, match=r"Dice 0\.9000 .*drop 0\.1000 > --max-dice-drop 0\.02.*nothing written"):
        engine.quantize_package(fp32, out, calibration="synthetic:1", max_windows=4)
    assert tries == [1, 1]  # all INT8, then with the two finest resolution stages in float32
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_cli_errors_are_one_line(packages, tmp_path):
    fp32, int8, _ = packages
    cases = [
        (("quantize", str(tmp_path / "nope"), "-o", str(tmp_path / "a")), "no model package"),
        (("quantize", str(fp32), "-o", str(int8)), "already exists"),
        (("quantize", str(fp32), "-o", str(tmp_path / "b"), "--calibration", "synthetic:0"), "1 to 64"),
        (("quantize", str(fp32), "-o", str(tmp_path / "c"), "--calibration", str(tmp_path / "none")), "not found"),
        (("quantize", str(fp32), "-o", str(tmp_path / "d"), "--max-dice-drop", "2"), "from 0 to 1"),
        (("quantize", str(fp32)), "-o"),
    ]
    for args, words in cases:
        assert words in one_error_line(run_cli(*args)), args
    assert not [p.name for p in tmp_path.iterdir()]


def test_command_defaults_are_the_engines():
    assert quantize_command.DEFAULT_CALIBRATION == engine.DEFAULT_CALIBRATION
    assert quantize_command.DEFAULT_MAX_DICE_DROP == engine.DEFAULT_MAX_DICE_DROP


def test_the_worker_runs_the_int8_network_with_the_slicer_modules_default_options(packages, tmp_path):
    """Slicer's module and effect send no precision: the worker's Segmenter picks INT8 on the CPU by itself."""
    import io

    from tumorseg_core.worker import Protocol, Worker

    _, int8, _ = packages
    image, output = tmp_path / "case.nii.gz", tmp_path / "labels.nrrd"
    sitk.WriteImage(make_phantom(6, size_xyz=(20, 22, 18), spacing_xyz=(2.0, 2.0, 2.0)).image, str(image))
    stream = io.StringIO()
    worker = Worker(Protocol(stream))
    worker.handle({"cmd": "segment", "id": 1, "images": [str(image)], "output": str(output), "model": str(int8),
                   "device": "cpu", "options": {"quality": "normal"}})
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert events[-1]["event"] == "done", events[-1]
    (segmenter,) = worker._segmenters.values()
    assert segmenter._predictor.precision == "int8" and output.is_file()


def test_stage_nodes_are_the_finest_resolution_levels(tmp_path):
    """Full resolution (levels=1), then also half resolution (levels=2), by the convolutions' output shapes."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from tumorseg_core.inference.backends.quantize_graph import stage_nodes

    rng = np.random.default_rng(0)

    def weight(name, shape):
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)

    same = {"kernel_shape": [3, 3, 3], "pads": [1] * 6}
    down = {"kernel_shape": [2, 2, 2], "strides": [2, 2, 2]}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="enc0", **same),
             helper.make_node("Conv", ["a", "w1"], ["b"], name="down1", **down),
             helper.make_node("Conv", ["b", "w2"], ["c"], name="down2", **down),
             helper.make_node("ConvTranspose", ["c", "w3"], ["d"], name="up2", **down),
             helper.make_node("ConvTranspose", ["d", "w4"], ["e"], name="up1", **down),
             helper.make_node("Conv", ["e", "w5"], ["y"], name="head", kernel_shape=[1, 1, 1])]
    inits = [weight("w0", (2, 1, 3, 3, 3)), weight("w1", (2, 2, 2, 2, 2)), weight("w2", (2, 2, 2, 2, 2)),
             weight("w3", (2, 2, 2, 2, 2)), weight("w4", (2, 2, 2, 2, 2)), weight("w5", (2, 2, 1, 1, 1))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, 8, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert stage_nodes(path, levels=1) == ["enc0", "up1", "head"]
    assert stage_nodes(path, levels=2) == ["enc0", "down1", "up2", "up1", "head"]
