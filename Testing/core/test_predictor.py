"""Tests for the sliding-window Predictor and device helpers (tiny volumes, 1x1 convs)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from tumorseg_core.errors import CancelledError, InputError, ModelPackageError, TumorSegError
from tumorseg_core.inference.devices import configure_threads, device_report, resolve_device
from tumorseg_core.inference.predictor import Predictor
from tumorseg_core.modelpkg.manifest import Manifest

SHAPE = (50, 61, 47)
PATCH = (32, 32, 32)


def threshold_conv(threshold: float, gain: float = 1.0, in_channels: int = 1) -> nn.Conv3d:
    """1x1x1 conv with logits (0, gain * (x - threshold)): argmax == (x > threshold)."""
    conv = nn.Conv3d(in_channels, 2, kernel_size=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[1, 0] = gain
        conv.bias[1] = -gain * threshold
    return conv


def region_conv(thresholds: list[float], gain: float = 10.0) -> nn.Conv3d:
    """1x1x1 conv whose channel k is gain * (x - thresholds[k]) (sigmoid regions)."""
    conv = nn.Conv3d(1, len(thresholds), kernel_size=1)
    with torch.no_grad():
        conv.weight.fill_(gain)
        conv.bias.copy_(torch.tensor([-gain * t for t in thresholds]))
    return conv


def volume(shape=SHAPE, avoid=(0.5,), seed: int = 0) -> np.ndarray:
    """(1, z, y, x) uniform noise kept at least 0.02 away from each value in ``avoid``."""
    v = np.random.default_rng(seed).random((1, *shape), dtype=np.float32)
    for t in avoid:
        near = np.abs(v - t) < 0.02
        v[near] = t + 0.03 + (v[near] - t)  # push to (t + 0.01, t + 0.05)
    return v


class ThresholdNet(nn.Module):
    """Parameter-free (B, 1, z, y, x) -> (B, 2, z, y, x) threshold logits."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x - self.threshold], dim=1)


def _predict_peak_bytes(classes: int, depth: int) -> int:
    """tracemalloc peak of one predict() on a (1, depth, 160, 160) volume (window 32^3)."""
    import tracemalloc

    torch.manual_seed(0)
    predictor = Predictor([nn.Conv3d(1, classes, 1)], (32, 32, 32), num_outputs=classes, device="cpu", overlap=0.25)
    volume = np.random.default_rng(0).normal(size=(1, depth, 160, 160)).astype(np.float32)
    predictor.predict(volume[:, :32, :32, :32])  # warm: first-call allocations are not the stitching's
    tracemalloc.start()
    try:
        predictor.predict(volume)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_stitching_memory_is_bounded_per_voxel() -> None:
    """Two classes: the uint8 labels, a band of one window's depth of sums, slab temporaries.

    Full-volume sums (4 B/voxel, as before the streaming band) fail this.
    """
    assert _predict_peak_bytes(2, 96) / (96 * 160 * 160) < 5.0


@pytest.mark.parametrize("classes", [2, 4])
def test_stitching_memory_grows_with_voxels_not_with_classes(classes: int) -> None:
    """Each added slice costs ~1 byte per voxel (its label) whatever the number of classes:
    the sums live in a band of the window's depth. Full-volume sums cost 4 B per voxel and
    foreground class (4 classes: > 12 B per added voxel)."""
    added = (_predict_peak_bytes(classes, 192) - _predict_peak_bytes(classes, 96)) / (96 * 160 * 160)
    assert added < 2.0, added


@pytest.mark.parametrize("overlap,window_batch", [(0.0, 1), (0.25, 3), (0.5, 2)])
def test_stitching_is_exact(overlap: float, window_batch: int) -> None:
    v = volume()
    predictor = Predictor([threshold_conv(0.5)], PATCH, 2, device="cpu", overlap=overlap, window_batch=window_batch)
    labels = predictor.predict(v)
    assert labels.dtype == np.uint8 and labels.shape == SHAPE
    np.testing.assert_array_equal(labels, (v[0] > 0.5).astype(np.uint8))
    probs = predictor.predict_probabilities(v)
    assert probs.shape == (1, *SHAPE) and probs.dtype == np.float32
    expected = 1.0 / (1.0 + np.exp(-(v[0] - 0.5)))  # softmax of (0, x - 0.5), class 1
    np.testing.assert_allclose(probs[0], expected, atol=1e-5)


def test_volume_smaller_than_window() -> None:
    v = volume((20, 10, 15))
    predictor = Predictor([threshold_conv(0.5)], PATCH, 2, device="cpu")
    labels = predictor.predict(v)
    assert labels.shape == (20, 10, 15)
    np.testing.assert_array_equal(labels, v[0] > 0.5)


def test_ensemble_averages_probabilities() -> None:
    v = volume(avoid=(0.5,))
    nets = [threshold_conv(0.4, gain=5.0), threshold_conv(0.6, gain=5.0)]
    predictor = Predictor(nets, PATCH, 2, device="cpu", overlap=0.25)
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    expected = (sig(5 * (v[0] - 0.4)) + sig(5 * (v[0] - 0.6))) / 2
    np.testing.assert_allclose(predictor.predict_probabilities(v)[0], expected, atol=1e-5)
    # by symmetry the averaged probability crosses 0.5 at x = 0.5; neither member alone does
    np.testing.assert_array_equal(predictor.predict(v), v[0] > 0.5)


def test_sigmoid_regions_painted_in_order() -> None:
    v = volume(avoid=(0.3, 0.7))
    x = v[0]
    nested = Predictor([region_conv([0.3, 0.7])], PATCH, 2, output_type="sigmoid", device="cpu",
                       region_values=[2, 5])
    expected = np.where(x > 0.7, 5, np.where(x > 0.3, 2, 0))
    np.testing.assert_array_equal(nested.predict(v), expected)
    assert nested.predict_probabilities(v).shape == (2, *SHAPE)
    # the later channel (the larger region) overwrites the earlier one
    reversed_order = Predictor([region_conv([0.7, 0.3])], PATCH, 2, output_type="sigmoid", device="cpu",
                               region_values=[5, 2])
    np.testing.assert_array_equal(reversed_order.predict(v), np.where(x > 0.3, 2, 0))


class CountingNet(nn.Module):
    """Wraps a network and counts forward calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def test_tta_with_equivariant_network() -> None:
    v = volume((40, 36, 33))
    net = CountingNet(threshold_conv(0.5))
    plain = Predictor([net], PATCH, 2, device="cpu", overlap=0.0)
    probs = plain.predict_probabilities(v)
    calls_plain = net.calls
    net.calls = 0
    with_tta = Predictor([net], PATCH, 2, device="cpu", overlap=0.0, tta=True)
    np.testing.assert_array_equal(with_tta.predict(v), v[0] > 0.5)
    assert net.calls == 8 * calls_plain  # every flip of z, y, x ran
    np.testing.assert_allclose(with_tta.predict_probabilities(v), probs, atol=1e-6)
    # the warm pipeline toggles TTA on an existing predictor
    with_tta.tta = False
    net.calls = 0
    with_tta.predict(v)
    assert net.calls == calls_plain


def test_cancel_and_progress() -> None:
    v = volume()
    predictor = Predictor([threshold_conv(0.5)], PATCH, 2, device="cpu", overlap=0.5)
    seen: list[tuple[float, str]] = []
    predictor.predict(v, progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert len(fractions) == 18  # 3 x 3 x 2 windows
    assert all(b > a for a, b in zip(fractions, fractions[1:]))
    assert fractions[-1] == 1.0 and seen[-1][1] == "window 18/18"

    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    seen.clear()
    with pytest.raises(CancelledError):
        predictor.predict(v, progress=lambda f, m: seen.append((f, m)), cancel=cancel)
    assert len(seen) == 3 and seen[-1][0] < 1.0


def test_wrong_channel_count_and_bad_input() -> None:
    predictor = Predictor([threshold_conv(0.5, in_channels=2)], PATCH, 2, device="cpu", modalities=["T1", "FLAIR"])
    with pytest.raises(InputError, match="model expects 2 input channels \\(T1, FLAIR\\), got 1"):
        predictor.predict(volume((8, 8, 8)))
    with pytest.raises(InputError, match="channels, z, y, x"):
        predictor.predict(np.zeros((8, 8, 8), dtype=np.float32))
    bad = np.zeros((2, 8, 8, 8), dtype=np.float32)
    bad[0, 1, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        predictor.predict(bad)


def test_network_output_mismatch_is_a_package_error() -> None:
    predictor = Predictor([threshold_conv(0.5)], PATCH, 3, device="cpu")
    with pytest.raises(ModelPackageError, match="output has shape"):
        predictor.predict(volume((8, 8, 8)))


class FlakyNet(nn.Module):
    """Raises a CUDA-style out-of-memory error for batches > 1, the first ``failures`` times."""

    def __init__(self, inner: nn.Module, failures: int, error: type[Exception] = torch.cuda.OutOfMemoryError) -> None:
        super().__init__()
        self.inner = inner
        self.failures = failures
        self.error = error
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        if x.shape[0] > 1 and self.failures > 0:
            self.failures -= 1
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, RuntimeError])
def test_oom_halves_the_window_batch(caplog: pytest.LogCaptureFixture, error: type[Exception]) -> None:
    v = volume()
    net = FlakyNet(threshold_conv(0.5), failures=2, error=error)
    predictor = Predictor([net], PATCH, 2, device="cpu", window_batch=4)
    with caplog.at_level(logging.WARNING, logger="tumorseg_core.inference.predictor"):
        labels = predictor.predict(v)
    np.testing.assert_array_equal(labels, v[0] > 0.5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "2 window(s)" in warnings[0] and "1 window(s)" in warnings[1]
    assert predictor.window_batch == 1 and net.batch_sizes[:3] == [4, 2, 1]


class DeviceOOMNet(ThresholdNet):
    """Out of memory whenever it runs anywhere but the CPU (a stand-in for a full GPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return super().forward(x)


def test_oom_at_batch_one_moves_to_cpu(caplog: pytest.LogCaptureFixture) -> None:
    # the "meta" device stands in for a GPU: a parameter-free net moves there and back
    v = volume((40, 35, 33))
    predictor = Predictor([DeviceOOMNet()], PATCH, 2, device=torch.device("meta"), in_channels=1)
    with caplog.at_level(logging.WARNING, logger="tumorseg_core.inference.predictor"):
        labels = predictor.predict(v)
    np.testing.assert_array_equal(labels, v[0] > 0.5)
    assert predictor.device.type == "cpu"
    assert any("continuing on the CPU" in r.getMessage() for r in caplog.records)


def test_oom_on_cpu_at_batch_one_and_other_errors_propagate() -> None:
    class AlwaysOOM(ThresholdNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("DefaultCPUAllocator: out of memory")

    class Broken(ThresholdNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("a bug")

    with pytest.raises(TumorSegError, match="out of memory on the CPU"):
        Predictor([AlwaysOOM()], PATCH, 2, device="cpu", in_channels=1).predict(volume((8, 8, 8)))
    with pytest.raises(ValueError, match="a bug"):
        Predictor([Broken()], PATCH, 2, device="cpu", in_channels=1).predict(volume((8, 8, 8)))


class Slice2DNet(nn.Module):
    """A 2D conv net wrapped to take (B, C, z, y, x) windows with z = 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[1, 0] = 1.0
            self.conv.bias[1] = -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, z, h, w = x.shape
        assert z == 1, "2D windows must have one slice"
        return self.conv(x[:, :, 0]).unsqueeze(2)


def test_2d_wrapped_network() -> None:
    v = volume((9, 40, 37))
    net = CountingNet(Slice2DNet())
    predictor = Predictor([net], (1, 32, 32), 2, device="cpu", overlap=0.5, tta=True)
    np.testing.assert_array_equal(predictor.predict(v), v[0] > 0.5)
    windows = 9 * 2 * 2  # one window per slice, 2 along y (40), 2 along x (37)
    assert net.calls == 4 * windows  # y/x flips only: flipping the size-1 z axis is skipped


def test_option_validation() -> None:
    net = threshold_conv(0.5)
    with pytest.raises(TumorSegError, match="overlap"):
        Predictor([net], PATCH, 2, device="cpu", overlap=1.0)
    with pytest.raises(ModelPackageError, match="output type"):
        Predictor([net], PATCH, 2, device="cpu", output_type="linear")
    with pytest.raises(ModelPackageError, match="multiple"):
        Predictor([net], (30, 32, 32), 2, device="cpu", size_divisor=16)
    predictor = Predictor([net], PATCH, 2, device="cpu")
    with pytest.raises(TumorSegError, match="overlap"):
        predictor.overlap = -0.1


def region_manifest(**inference) -> Manifest:
    """A real, validated sigmoid manifest: regions 3 and 7, window 32 x 24 x 16 (x, y, z)."""
    return Manifest({
        "name": "regions-test", "version": "1", "license": "Apache-2.0", "description": "two regions",
        "architecture": "unet3d",
        "kwargs": {"in_channels": 1, "out_channels": 2, "features": [2, 4], "norm": "none"},
        "inputs": [{"modality": "CT", "normalization": {"type": "zscore"}}],
        "spacing": [1.0, 1.0, 1.0], "orientation": "LPS",
        "patch_size": [32, 24, 16],  # x, y, z
        "output": {"type": "sigmoid", "regions": [
            {"value": 3, "name": "Whole", "color": [0.1, 0.2, 0.3]},
            {"value": 7, "name": "Core", "color": [0.4, 0.5, 0.6]}]},
        "inference": inference,
        "files": {"fold0.safetensors": "0" * 64},
    })


def test_from_package_reads_the_manifest() -> None:
    manifest = region_manifest(overlap=0.25, tta=False)
    loaded: list[torch.device] = []

    def load_networks(device: torch.device) -> list[nn.Module]:
        loaded.append(device)
        return [region_conv([0.3, 0.7])]

    package = SimpleNamespace(manifest=manifest, load_networks=load_networks, sha256="f" * 64,
                              weight_files=[Path("fold0.safetensors")])
    predictor = Predictor.from_package(package, device="cpu", window_batch=2, tta=None)
    assert loaded == [torch.device("cpu")]
    assert predictor.patch_size_zyx == (16, 24, 32)
    assert predictor.output_type == "sigmoid" and predictor.region_values == (3, 7)
    assert predictor.overlap == 0.25 and predictor.window_batch == 2 and predictor.in_channels == 1
    assert predictor.tta is False and predictor.modalities == ("CT",)
    v = volume((20, 30, 40), avoid=(0.3, 0.7))
    np.testing.assert_array_equal(predictor.predict(v), np.where(v[0] > 0.7, 7, np.where(v[0] > 0.3, 3, 0)))


def test_from_package_options_override_the_manifest_defaults() -> None:
    package = SimpleNamespace(manifest=region_manifest(overlap=0.25, tta=True), sha256="f" * 64,
                              load_networks=lambda device: [region_conv([0.3, 0.7])],
                              weight_files=[Path("fold0.safetensors")])
    assert Predictor.from_package(package, device="cpu").tta is True  # the manifest's default
    predictor = Predictor.from_package(package, device="cpu", overlap=0.5, tta=False)
    assert predictor.overlap == 0.5 and predictor.tta is False


def test_from_package_with_a_duck_typed_manifest() -> None:
    """Any manifest offering predictor_settings() will do; without in_channels it is read from the network."""
    manifest = SimpleNamespace(predictor_settings=lambda: {
        "patch_size_zyx": (8, 8, 8), "num_outputs": 3, "output_type": "softmax", "overlap": 0.5})
    package = SimpleNamespace(manifest=manifest, load_networks=lambda device: [threshold_conv(0.5)],
                              sha256="f" * 64, weight_files=[Path("fold0.safetensors")])
    predictor = Predictor.from_package(package, device="cpu", overlap=0.0)
    assert predictor.num_outputs == 3 and predictor.patch_size_zyx == (8, 8, 8)
    assert predictor.overlap == 0.0  # the option wins over the manifest's default
    assert predictor.in_channels == 1  # read from the first conv layer


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_resolve_device_without_cuda() -> None:
    with pytest.raises(TumorSegError, match="CUDA was requested but no GPU is available"):
        resolve_device("cuda")
    with pytest.raises(TumorSegError, match="CUDA was requested"):
        resolve_device("cuda:1")
    assert resolve_device("auto").type in ("cpu", "mps")


def test_resolve_device_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(TumorSegError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_device_report_and_threads(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    report = device_report()
    for key in ("torch", "cuda_available", "gpus", "mps_available", "cpu_count", "torch_threads", "auto_device"):
        assert key in report
    assert report["torch"] == torch.__version__
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert configure_threads() == report["cpu_count"]
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what a scheduler sets: honoured when --threads is not given
        assert configure_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
        assert configure_threads() == report["cpu_count"]
        with pytest.raises(TumorSegError):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)
