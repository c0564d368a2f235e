"""A CPU run on an exported backend with a warm cache never imports torch (~200 MB, ~1.5 s).

The subprocess tests run ``segment()`` in a fresh interpreter and report whether torch
got imported; the unit tests check that the numpy batch path computes what the torch
path computes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from model_factory import make_tiny_package

from tumorseg_core.errors import TumorSegError
from tumorseg_core.inference import backends, devices
from tumorseg_core.inference.backends import LazyNetworks
from tumorseg_core.inference.tta import flip_axes_combinations
from tumorseg_core.inference.window_batch import run_batch_numpy, run_batch_torch, softmax_numpy

ROOT = Path(__file__).resolve().parents[2]
EXPORTED = [b for b in ("openvino", "onnxruntime") if backends.backend_installed(b)]

# Segments an image in a fresh interpreter; prints the labels' sum, whether torch was
# imported, and the backend used.
SCRIPT = """
import json, sys
import SimpleITK as sitk
from tumorseg_core.inference.segmenter import Segmenter
segmenter = Segmenter(sys.argv[1], device=sys.argv[3], backend=sys.argv[4])
labels = segmenter.segment(sys.argv[2])
sitk.WriteImage(labels, sys.argv[5])
print(json.dumps({"torch": "torch" in sys.modules, "backend": segmenter._predictor.backend}))
"""


def run_segment(package: Path, image: Path, out: Path, cache: Path, device: str = "cpu", backend: str = "auto") -> dict:
    env = {**os.environ, "TUMORSEG_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(package), str(image), device, backend, str(out)],
                          capture_output=True, encoding="utf-8", env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not EXPORTED, reason="no exported backend installed")
def test_warm_export_cache_segments_without_torch(tmp_path, make_sphere_image) -> None:
    package = make_tiny_package(tmp_path / "pkg")
    image, _ = make_sphere_image(radius_mm=8.0, size_xyz=(36, 34, 30), spacing=(1.0, 1.2, 1.5))
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    cache = tmp_path / "cache"
    first = run_segment(package, tmp_path / "image.nii.gz", tmp_path / "first.nii.gz", cache)
    assert first == {"torch": True, "backend": EXPORTED[0]}  # the first run builds the export
    second = run_segment(package, tmp_path / "image.nii.gz", tmp_path / "second.nii.gz", cache)
    assert second == {"torch": False, "backend": EXPORTED[0]}
    reference = run_segment(package, tmp_path / "image.nii.gz", tmp_path / "torch.nii.gz", cache, backend="torch")
    assert reference == {"torch": True, "backend": "torch"}
    labels = [sitk.ReadImage(str(tmp_path / f"{n}.nii.gz")) for n in ("first", "second", "torch")]
    arrays = [sitk.GetArrayFromImage(x) for x in labels]
    np.testing.assert_array_equal(arrays[0], arrays[1])
    agree = 2 * ((arrays[1] > 0) & (arrays[2] > 0)).sum() / max(1, (arrays[1] > 0).sum() + (arrays[2] > 0).sum())
    assert agree >= 0.99 or ((arrays[1] > 0).sum() == (arrays[2] > 0).sum() == 0)
    image = sitk.ReadImage(str(tmp_path / "image.nii.gz"))  # NIfTI stores float32 spacings
    for out in labels:  # exactly the input's grid
        assert out.GetSize() == image.GetSize() and out.GetSpacing() == image.GetSpacing()
        assert out.GetOrigin() == image.GetOrigin() and out.GetDirection() == image.GetDirection()


@pytest.mark.skipif(not EXPORTED, reason="no exported backend installed")
def test_a_corrupt_cached_export_is_rebuilt_with_torch(tmp_path, make_sphere_image) -> None:
    package = make_tiny_package(tmp_path / "pkg", seed=3)
    image, _ = make_sphere_image(radius_mm=7.0, size_xyz=(30, 30, 24), spacing=(1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    cache = tmp_path / "cache"
    run_segment(package, tmp_path / "image.nii.gz", tmp_path / "a.nii.gz", cache)

    def corrupt(kind: str) -> None:
        for folder in (cache / "exports").glob(f"{kind}-*"):
            model = next(p for p in folder.iterdir() if p.suffix in (".bin", ".onnx"))
            data = bytearray(model.read_bytes())
            data[len(data) // 2] ^= 0xFF
            model.write_bytes(bytes(data))

    kinds = ["openvino", "onnx"] if EXPORTED[0] == "openvino" else ["onnx"]
    if len(kinds) == 2:  # a corrupt IR is rebuilt from the verified ONNX export: still no torch
        corrupt("openvino")
        assert run_segment(package, tmp_path / "image.nii.gz", tmp_path / "b.nii.gz", cache)["torch"] is False
    for kind in kinds:
        corrupt(kind)
    rebuilt = run_segment(package, tmp_path / "image.nii.gz", tmp_path / "b.nii.gz", cache)
    assert rebuilt == {"torch": True, "backend": EXPORTED[0]}  # never trusted: rebuilt from the weights
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a.nii.gz"))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b.nii.gz"))))


def test_device_name_cpu_and_auto_without_gpu_do_not_import_torch() -> None:
    script = ("import sys\nfrom tumorseg_core.inference import devices\n"
              "devices.gpu_may_be_present = lambda: False\n"
              "print(devices.device_name('cpu'), devices.device_name(' AUTO '), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, encoding="utf-8", cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["cpu", "cpu", "False"]


def test_device_name_follows_resolve_device(monkeypatch) -> None:
    assert devices.device_name(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(devices, "gpu_may_be_present", lambda: True)
    assert devices.device_name("auto") == str(devices.resolve_device("auto"))
    with pytest.raises(TumorSegError, match="unknown device"):
        devices.device_name("tpu")


def test_gpu_probe_asks_torch_once_it_is_loaded(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.gpu_may_be_present() is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    assert devices.gpu_may_be_present() is False


def test_configured_threads_reach_torch_when_it_is_imported_later(monkeypatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setitem(sys.modules, "torch", None)  # "not imported yet"
        assert devices.configure_threads(1) == 1
        assert devices.configured_threads() == 1
        monkeypatch.setitem(sys.modules, "torch", torch)
        torch.set_num_threads(max(2, before))
        devices.import_torch()
        assert torch.get_num_threads() == 1
    finally:
        monkeypatch.setattr(devices, "_configured_threads", None)
        torch.set_num_threads(before)


def test_lazy_networks_load_once_and_check_the_count() -> None:
    calls: list[int] = []
    conv = torch.nn.Conv3d(1, 2, 1)
    lazy = LazyNetworks(lambda: calls.append(1) or [conv], 1)
    assert len(lazy) == 1 and not lazy.loaded and calls == []
    assert lazy.modules() == [conv] and lazy.modules() == [conv] and calls == [1]
    with pytest.raises(TumorSegError, match="expected 2"):
        LazyNetworks(lambda: [conv], 2).modules()


@pytest.mark.parametrize("output_type", ["softmax", "sigmoid"])
def test_numpy_batch_path_matches_torch_path(output_type: str) -> None:
    torch.manual_seed(0)
    nets = [torch.nn.Conv3d(2, 3, kernel_size=3, padding=1).eval() for _ in range(2)]
    windows = np.random.default_rng(0).normal(size=(2, 2, 6, 7, 8)).astype(np.float32)
    gaussian = np.random.default_rng(1).uniform(0.001, 1, size=(6, 7, 8)).astype(np.float32)
    flips = flip_axes_combinations((2, 3, 4))

    def runner(net):
        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return net(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        return run

    expected = run_batch_torch(nets, windows, torch.from_numpy(gaussian), "cpu", flips, output_type, 3, amp=False)
    got = run_batch_numpy([runner(n) for n in nets], windows, gaussian, flips, output_type, 3)
    assert got.dtype == np.float32 and got.shape == expected.shape == (2, 3 - (output_type == "softmax"), 6, 7, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_numpy_softmax_is_stable_for_large_logits() -> None:
    logits = np.array([[[1000.0], [999.0]], [[-1000.0], [-1000.0]]], dtype=np.float32)[..., None, None]
    p = softmax_numpy(logits.copy())
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[1, :, 0, 0, 0], [0.5, 0.5])


def test_numpy_runner_output_shape_is_checked() -> None:
    from tumorseg_core.errors import ModelPackageError

    windows = np.zeros((1, 1, 4, 4, 4), np.float32)
    with pytest.raises(ModelPackageError, match="expected"):
        run_batch_numpy([lambda x: np.zeros((1, 3, 4, 4, 4), np.float32)], windows, np.ones((4, 4, 4), np.float32),
                        [()], "softmax", 2)
