"""Exported CPU backends (ONNX Runtime, OpenVINO): agreement with torch, cache safety, warm start."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from model_factory import tiny_manifest

from tumorseg_core.errors import TumorSegError
from tumorseg_core.inference import backends
from tumorseg_core.inference.backends import export as export_mod
from tumorseg_core.inference.predictor import Predictor
from tumorseg_core.modelpkg.package import open_package, write_package
from tumorseg_core.models.registry import build_network

pytest.importorskip("onnx")
EXPORTED = [b for b in ("onnxruntime", "openvino") if backends.backend_installed(b)]
AUTO_ORDER = [b for b in ("openvino", "onnxruntime") if b in EXPORTED] + ["torch"]
SHAPE = (20, 26, 23)


def smooth_volume(seed: int = 0, shape=SHAPE) -> np.ndarray:
    """(1, z, y, x) float32 smooth random field (blobs), zero mean, unit variance."""
    noise = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    blurred = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(noise), 2.0))
    return ((blurred - blurred.mean()) / blurred.std())[None].astype(np.float32)


def balanced_state(seed: int, kwargs: dict, x: np.ndarray) -> dict:
    """Random unet3d weights whose head bias splits ``x`` into about half foreground."""
    torch.manual_seed(seed)
    net = build_network("unet3d", kwargs).eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(x[None, :, :16, :16, :16]))
        margin = (logits[0, 1] - logits[0, 0]).median()
        net.head.bias[1] -= margin
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """Two-fold tiny package (instance norm, patch 16^3) with mixed predictions."""
    manifest = tiny_manifest()
    manifest["kwargs"] = {"in_channels": 1, "out_channels": 2, "features": [4, 8], "norm": "instance"}
    x = smooth_volume(1)
    states = [balanced_state(s, manifest["kwargs"], x) for s in (0, 1)]
    return open_package(write_package(tmp_path_factory.mktemp("pkg") / "tiny2", manifest, states))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / float(total)


@pytest.mark.parametrize("name", EXPORTED)
def test_exported_backend_agrees_with_torch(package, name: str, cache: Path) -> None:
    v = smooth_volume(2)
    reference = Predictor.from_package(package, device="cpu", backend="torch")
    exported = Predictor.from_package(package, device="cpu", backend=name)
    assert exported.backend == name and reference.backend == "torch"
    expected = reference.predict(v)
    assert 0.1 < expected.mean() < 0.9  # a real mix of both labels
    assert dice(exported.predict(v), expected) >= 0.99
    np.testing.assert_allclose(exported.predict_probabilities(v), reference.predict_probabilities(v), atol=2e-3)
    # one export per fold, each with its sidecar and no temporary leftovers
    kind = "onnx" if name == "onnxruntime" else "openvino"
    folders = sorted((cache / "exports").glob(f"{kind}-*"))
    assert len(folders) == 2 and all((f / export_mod.SIDECAR).is_file() for f in folders)
    assert not [p for p in (cache / "exports").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", EXPORTED)
def test_tta_and_window_batch_through_runner(package, name: str) -> None:
    v = smooth_volume(3)
    reference = Predictor.from_package(package, device="cpu", backend="torch", tta=True, window_batch=3)
    exported = Predictor.from_package(package, device="cpu", backend=name, tta=True, window_batch=3)
    assert dice(exported.predict(v), reference.predict(v)) >= 0.99


def _one_export(cache: Path) -> Path:
    (folder,) = sorted((cache / "exports").glob("onnx-*"))[:1]
    return folder


@pytest.mark.skipif("onnxruntime" not in EXPORTED, reason="onnxruntime not installed")
def test_cache_is_reused_then_rebuilt_when_corrupt(package, cache: Path, monkeypatch) -> None:
    v = smooth_volume(4)
    expected = Predictor.from_package(package, device="cpu", backend="torch").predict(v)
    Predictor.from_package(package, device="cpu", backend="onnxruntime")
    folder = _one_export(cache)
    calls: list[Path] = []
    real_export = export_mod._export_onnx
    monkeypatch.setattr(export_mod, "_export_onnx", lambda spec, path: calls.append(path) or real_export(spec, path))

    Predictor.from_package(package, device="cpu", backend="onnxruntime")
    assert calls == []  # valid cache: no export

    model = folder / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))  # hash mismatch with the sidecar
    predictor = Predictor.from_package(package, device="cpu", backend="onnxruntime")
    assert len(calls) == 1
    assert dice(predictor.predict(v), expected) >= 0.99

    (folder / export_mod.SIDECAR).write_text("{not json", encoding="utf-8")
    Predictor.from_package(package, device="cpu", backend="onnxruntime")
    assert len(calls) == 2


@pytest.mark.skipif("onnxruntime" not in EXPORTED, reason="onnxruntime not installed")
def test_unloadable_export_with_matching_sidecar_is_rebuilt(package, cache: Path) -> None:
    v = smooth_volume(5)
    Predictor.from_package(package, device="cpu", backend="onnxruntime")
    for folder in (cache / "exports").glob("onnx-*"):
        (folder / "model.onnx").write_bytes(b"garbage, not a model")
        sidecar = json.loads((folder / export_mod.SIDECAR).read_text())
        sidecar["files"]["model.onnx"] = export_mod.sha256_file(folder / "model.onnx")
        (folder / export_mod.SIDECAR).write_text(json.dumps(sidecar))
    predictor = Predictor.from_package(package, device="cpu", backend="onnxruntime")
    expected = Predictor.from_package(package, device="cpu", backend="torch").predict(v)
    assert dice(predictor.predict(v), expected) >= 0.99
    assert all((f / "model.onnx").stat().st_size > 100 for f in (cache / "exports").glob("onnx-*"))


def test_cache_key_depends_on_window_identity_and_version(package, monkeypatch) -> None:
    net = package.load_networks("cpu")[0]
    base = export_mod.ExportSpec(net, "pkg:fold0", (16, 16, 16), 1)
    folder = export_mod.export_folder("onnx", base)
    assert export_mod.export_folder("onnx", export_mod.ExportSpec(net, "pkg:fold0", (16, 16, 32), 1)) != folder
    assert export_mod.export_folder("onnx", export_mod.ExportSpec(net, "pkg:fold1", (16, 16, 16), 1)) != folder
    assert export_mod.export_folder("openvino", base) != folder
    monkeypatch.setattr(torch, "__version__", "0.0-other")
    assert export_mod.export_folder("onnx", base) != folder


def test_auto_picks_fastest_installed_and_torch_off_cpu(monkeypatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert backends.backend_candidates("auto", cuda) == ["torch"]
    assert backends.backend_candidates("auto", cpu) == AUTO_ORDER
    monkeypatch.setattr(backends, "backend_installed", lambda name: name in ("torch", "onnxruntime", "openvino"))
    assert backends.backend_candidates("auto", cpu) == ["openvino", "onnxruntime", "torch"]
    monkeypatch.setattr(backends, "backend_installed", lambda name: name in ("torch", "onnxruntime"))
    assert backends.backend_candidates("auto", cpu) == ["onnxruntime", "torch"]
    with pytest.raises(TumorSegError, match="not installed"):
        backends.backend_candidates("openvino", cpu)
    with pytest.raises(TumorSegError, match="CPU only"):
        backends.backend_candidates("onnxruntime", cuda)
    with pytest.raises(TumorSegError, match="unknown backend"):
        backends.backend_candidates("tensorrt", cpu)


def test_auto_falls_back_when_export_fails(package, monkeypatch) -> None:
    def broken(spec, path):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(export_mod, "_export_onnx", broken)
    predictor = Predictor.from_package(package, device="cpu", backend="auto")
    assert predictor.backend == "torch"
    if EXPORTED:
        with pytest.raises(TumorSegError, match="exporter exploded"):
            Predictor.from_package(package, device="cpu", backend=EXPORTED[0])


@pytest.mark.skipif(not EXPORTED, reason="no exported backend installed")
def test_segmenter_keeps_backend_warm(package, monkeypatch, make_sphere_image) -> None:
    from tumorseg_core.inference.segmenter import Segmenter

    image, _ = make_sphere_image(radius_mm=8.0, size_xyz=(36, 36, 30), spacing=(1.0, 1.0, 1.0))
    segmenter = Segmenter(package, device="cpu", backend="auto", cascade=False)
    first = segmenter.segment(image)
    assert segmenter._predictor.backend == AUTO_ORDER[0]
    loads: list[str] = []
    monkeypatch.setattr(export_mod, "ensure_export", lambda *a, **k: loads.append("export"))
    monkeypatch.setattr(type(package), "load_networks", lambda *a, **k: loads.append("load"))
    second = segmenter.segment(image)
    assert loads == []
    np.testing.assert_array_equal(sitk.GetArrayFromImage(first), sitk.GetArrayFromImage(second))


@pytest.mark.parametrize("classes", [2, 4])
def test_softmax_accumulates_foreground_only_and_matches_direct_argmax(classes: int) -> None:
    """Background is weight - sum(foreground); labels equal argmax of a per-voxel network."""
    torch.manual_seed(classes)
    conv = torch.nn.Conv3d(1, classes, kernel_size=1)
    v = smooth_volume(6)
    predictor = Predictor([conv], (16, 16, 16), num_outputs=classes, device="cpu", overlap=0.5)
    with torch.no_grad():
        direct = torch.softmax(conv(torch.from_numpy(v)[None]), 1)[0]
    np.testing.assert_array_equal(predictor.predict(v), direct.argmax(0).numpy().astype(np.uint8))
    np.testing.assert_allclose(predictor.predict_probabilities(v), direct[1:].numpy(), atol=1e-5)


def test_openvino_is_imported_without_its_usage_telemetry(tmp_path) -> None:
    """``import openvino`` would report usage through a forked process (which hung forever in
    the worker); TumorSeg binds the converter's no-op stub instead and forks nothing."""
    pytest.importorskip("openvino")
    import os
    import subprocess
    import sys

    script = (
        "import multiprocessing, sys, time\n"
        "from tumorseg_core.inference.backends.openvino_backend import import_openvino\n"
        "ov = import_openvino()\n"
        "from openvino.tools.ovc import telemetry_utils\n"
        "time.sleep(0.5)\n"
        "print(telemetry_utils.tm.__name__, 'openvino_telemetry' in sys.modules, len(multiprocessing.active_children()))\n"
    )
    # Outside CI, with no opt-out file: the situation of a user's machine.
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, encoding="utf-8", env=env,
                          cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["openvino.tools.ovc.telemetry_stub", "False", "0"]


def test_openvino_is_imported_only_through_import_openvino() -> None:
    root = Path(__file__).resolve().parents[2]
    offenders = [str(p.relative_to(root)) for p in (root / "tumorseg_core").rglob("*.py")
                 if p.name != "openvino_backend.py"
                 and any(line.strip().startswith(("import openvino", "from openvino"))
                         for line in p.read_text(encoding="utf-8").splitlines())]
    assert offenders == []
