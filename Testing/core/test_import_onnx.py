"""tumorseg import model.onnx + JSON sidecar: the same results as the network run as a normal package.

A tiny TumorSeg unet3d with random weights is exported by torch.onnx.export (dynamic batch
and spatial axes), imported with a sidecar, and run through Segmenter / ``tumorseg
segment``; the same weights written as an ordinary package are the reference. Refusals:
missing sidecar, unknown sidecar key, wrong channel count, custom operator domain,
external data, a tampered package.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import SimpleITK as sitk
import torch
from cli_helpers import one_error_line, run_cli
from directions import rotation_direction
from model_factory import tiny_manifest

import tumorseg_core
from tumorseg_core.errors import ModelPackageError, TumorSegError
from tumorseg_core.inference.predictor import Predictor
from tumorseg_core.inference.segmenter import Segmenter
from tumorseg_core.modelpkg.convert import source_kind
from tumorseg_core.modelpkg.package import open_package, write_package
from tumorseg_core.models.registry import build_network
from tumorseg_core.synthetic import make_phantom

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = tiny_manifest(spacing=(2.0, 2.0, 2.0), patch=(16, 16, 16))
SIDECAR_KEYS = ("inputs", "spacing", "orientation", "patch_size", "output", "postprocessing", "license", "description")


def export(net: torch.nn.Module, path: Path, dynamic_channels: bool = False) -> Path:
    axes = {0: "batch", 2: "z", 3: "y", 4: "x"}
    if dynamic_channels:
        axes = {**axes, 1: "channels"}
    example = torch.zeros((1, 1, 16, 16, 16))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": axes, "logits": {0: "batch", 2: "z",
                                                                                         3: "y", 4: "x"}})
    return path


def write_sidecar(path: Path, **changes) -> Path:
    data = {key: MANIFEST[key] for key in SIDECAR_KEYS}
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(reference package, ONNX package, the .onnx file) for one random unet3d."""
    tmp = tmp_path_factory.mktemp("onnx-import")
    torch.manual_seed(11)
    net = build_network(MANIFEST["architecture"], MANIFEST["kwargs"]).eval()
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    reference = write_package(tmp / "reference", {**MANIFEST, "name": "reference"}, [state])
    onnx_file = export(net, tmp / "tiny.onnx")
    write_sidecar(tmp / "tiny.onnx.json", citation="Someone et al. 2026")
    imported = tumorseg_core.import_model(onnx_file, tmp / "tiny-onnx")
    return reference, imported, onnx_file


def oblique_phantom() -> sitk.Image:
    return make_phantom(3, size_xyz=(40, 34, 18), spacing_xyz=(0.9, 1.2, 2.6),
                        direction=rotation_direction("z", 25.0), n_lesions=2).image


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / float(total)


def test_package_holds_the_graph(models):
    reference, imported, onnx_file = models
    assert source_kind(onnx_file) == "onnx"
    package = open_package(imported)
    manifest = package.manifest
    assert manifest.name == "tiny-onnx" and manifest.architecture == "onnx"
    assert manifest.kwargs == {"in_channels": 1, "out_channels": 2, "num_bytes": onnx_file.stat().st_size}
    assert sorted(manifest.files) == ["README.md", "fold0.safetensors"]
    assert "Someone et al. 2026" in (imported / "README.md").read_text()
    (net,) = package.load_networks("cpu")
    assert net.onnx_bytes() == onnx_file.read_bytes()


def test_probabilities_match_the_network(models):
    reference, imported, _ = models
    volume = np.random.default_rng(0).normal(size=(1, 20, 28, 24)).astype(np.float32)
    expected = Predictor.from_package(open_package(reference), device="cpu", backend="torch").predict_probabilities(volume)
    for backend, used in (("auto", "torch"), ("torch", "torch"), ("onnxruntime", "onnxruntime")):
        predictor = Predictor.from_package(open_package(imported), device="cpu", backend=backend, window_batch=2)
        assert predictor.backend == used
        got = predictor.predict_probabilities(volume)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(TumorSegError, match="imported ONNX graph"):
        Predictor.from_package(open_package(imported), device="cpu", backend="openvino")


def test_segment_matches_the_normal_package_on_an_oblique_grid(models, tmp_path):
    reference, imported, _ = models
    image = oblique_phantom()
    expected = Segmenter(str(reference), device="cpu").segment(image)
    got = Segmenter(str(imported), device="cpu").segment(image)
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(got, attribute)() == getattr(image, attribute)()
    a, b = sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(expected)
    assert np.array_equal(a, b) or dice(a, b) >= 0.999
    # The command line: import with an explicit sidecar, then segment.
    sidecar = write_sidecar(tmp_path / "described.json")
    image_path = tmp_path / "case.nii.gz"
    sitk.WriteImage(image, str(image_path))
    result = run_cli("import", str(models[2]), "--sidecar", str(sidecar), "--name", "cli-onnx", "-o",
                     str(tmp_path / "pkg"))
    assert result.returncode == 0, result.stderr
    assert open_package(tmp_path / "pkg").manifest.name == "cli-onnx"
    out = tmp_path / "labels.nii.gz"
    result = run_cli("segment", str(image_path), "--model", str(tmp_path / "pkg"), "--device", "cpu", "-o", str(out))
    assert result.returncode == 0, result.stderr
    written = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(written), b) or dice(sitk.GetArrayFromImage(written), b) >= 0.999


def test_missing_sidecar_and_unknown_key_are_refused(models, tmp_path):
    onnx_file = tmp_path / "bare.onnx"
    onnx_file.write_bytes(models[2].read_bytes())
    line = one_error_line(run_cli("import", str(onnx_file), "-o", str(tmp_path / "pkg")))
    assert "sidecar" in line and "inputs" in line and "spacing" in line and "patch_size" in line and "output" in line
    write_sidecar(tmp_path / "bare.onnx.json", weights="x.bin", extra=1)
    with pytest.raises(ModelPackageError, match="unknown key.*extra, weights"):
        tumorseg_core.import_model(onnx_file, tmp_path / "pkg")
    write_sidecar(tmp_path / "bare.onnx.json", spacing=[1.0, -1.0, 1.0])  # the manifest's own checks apply
    with pytest.raises(ModelPackageError, match="spacing"):
        tumorseg_core.import_model(onnx_file, tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


def test_wrong_channel_count_is_refused(models, tmp_path):
    two = {**MANIFEST["inputs"][0], "modality": "T2"}
    sidecar = write_sidecar(tmp_path / "two.json", inputs=[MANIFEST["inputs"][0], two])
    with pytest.raises(ModelPackageError, match="2 input"):
        tumorseg_core.import_model(models[2], tmp_path / "pkg", sidecar=sidecar)


def _custom_op_model(path: Path) -> Path:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, "z", "y", "x"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, "z", "y", "x"])
    node = helper.make_node("Segment", ["image"], ["logits"], domain="com.example.ops")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.ops", 1)])
    onnx.save_model(model, str(path))
    return path


def test_custom_ops_and_external_data_are_refused(models, tmp_path):
    custom = _custom_op_model(tmp_path / "custom.onnx")
    write_sidecar(tmp_path / "custom.onnx.json")
    with pytest.raises(ModelPackageError, match="custom operator domain com.example.ops"):
        tumorseg_core.import_model(custom, tmp_path / "pkg")
    external = tmp_path / "external.onnx"
    onnx.save_model(onnx.load(str(models[2])), str(external), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="external.bin", size_threshold=0)
    write_sidecar(tmp_path / "external.onnx.json")
    line = one_error_line(run_cli("import", str(external), "-o", str(tmp_path / "pkg")))
    assert "external data files are not supported" in line
    assert not (tmp_path / "pkg").exists()


def test_tampered_package_is_refused(models, tmp_path):
    import shutil

    copy = Path(shutil.copytree(models[1], tmp_path / "tampered"))
    weights = copy / "fold0.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one byte of the stored graph
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="sha256"):
        open_package(copy)
