"""ROI cascade: equals the exhaustive pass on a lesion phantom, skips empty volumes, CLI flags."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from model_factory import make_tiny_package
from stand_in_networks import MeanThresholdNet
from torch import nn

from tumorseg_core.inference import cascade, roi_windows
from tumorseg_core.inference.predictor import Predictor
from tumorseg_core.inference.sliding_window import window_starts

SPACING_XYZ = (1.5, 1.5, 1.5)
PATCH = (16, 16, 16)




def phantom(shape=(48, 56, 64), centers=((12, 14, 16), (30, 40, 20), (36, 20, 50)), radii=(5, 3, 4)) -> np.ndarray:
    """(1, z, y, x) float32: noisy background near 0, bright balls of the given radii (voxels)."""
    rng = np.random.default_rng(0)
    volume = rng.normal(0.0, 0.05, shape).astype(np.float32)
    grid = np.indices(shape)
    for center, radius in zip(centers, radii):
        distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, center)))
        volume[distance <= radius] += 1.0
    return volume[None]


def make_predictor(net: nn.Module) -> Predictor:
    return Predictor([net], PATCH, num_outputs=2, device="cpu", overlap=0.5, window_batch=1)


def test_cascade_matches_exhaustive_on_lesion_phantom() -> None:
    v = phantom()
    net = MeanThresholdNet()
    predictor = make_predictor(net)
    exhaustive = predictor.predict(v)
    exhaustive_windows = net.windows
    assert exhaustive.sum() > 300  # three lesions found

    net.windows = 0
    fractions: list[float] = []
    result = cascade.predict_cascade(predictor, v, SPACING_XYZ, progress=lambda f, m: fractions.append(f))
    # Windows placed on the lesions see some border voxels from other windows than the
    # grid does (zero padding at a window's edge): a handful of voxels may differ.
    differing = int((result != exhaustive).sum())
    assert differing <= 0.005 * exhaustive.sum(), differing
    assert 0 < net.windows < exhaustive_windows  # coarse pass + only the windows near lesions
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def spy_fine_windows(monkeypatch) -> list[tuple[np.ndarray, list]]:
    """Record (candidate region, fine-pass window starts) of every cascade call."""
    calls: list[tuple[np.ndarray, list]] = []
    real = roi_windows.roi_window_starts

    def spy(mask, patch, overlap):
        starts = real(mask, patch, overlap)
        calls.append((mask, starts))
        return starts

    monkeypatch.setattr(cascade, "roi_window_starts", spy)
    return calls


def test_fine_pass_runs_windows_placed_on_the_lesions(monkeypatch) -> None:
    v = phantom()
    net = MeanThresholdNet()
    predictor = make_predictor(net)
    calls = spy_fine_windows(monkeypatch)
    result = cascade.predict_cascade(predictor, v, SPACING_XYZ)
    (region, starts), = calls
    small = cascade.coarse_shape(v.shape[1:], PATCH, cascade.COARSE_FACTOR)
    coarse_windows = len(window_starts([max(n, p) for n, p in zip(small, PATCH)], PATCH, 0.5))
    assert net.windows == coarse_windows + len(starts)
    # three lesions, each box tiled 2 x 2 x 2 (boxes of 18-24 voxels, patch 16, overlap 0.5);
    # the fixed grid ran every one of its windows that touches the candidates: 121
    assert len(roi_windows.component_boxes(region)) == 3 and len(starts) == 24
    assert len(roi_windows.grid_starts_touching(region, PATCH, 0.5)) == 121
    assert not result[~region].any()


class BoxMeanNet(MeanThresholdNet):
    """Like MeanThresholdNet with a 5x5x5 mean: zero padding at window faces shifts it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, kernel_size=5, padding=2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1] = 8.0 / 125.0
            self.conv.bias.copy_(torch.tensor([0.0, -8.0 * 0.4]))


def test_cascade_matches_exhaustive_inside_the_candidates_for_a_context_network(monkeypatch) -> None:
    v = phantom(radii=(7, 5, 6))
    predictor = make_predictor(BoxMeanNet())
    exhaustive = predictor.predict(v)
    calls = spy_fine_windows(monkeypatch)
    result = cascade.predict_cascade(predictor, v, SPACING_XYZ)
    (region, _), = calls
    assert exhaustive[region].sum() > 0.95 * exhaustive.sum() > 0  # the coarse pass found the lesions
    # different windows see a voxel near their faces differently: allow a few such voxels
    assert np.count_nonzero(result[region] != exhaustive[region]) <= 0.01 * exhaustive.sum()
    assert not result[~region].any()


def test_empty_candidates_give_empty_result_without_full_resolution_windows() -> None:
    v = phantom(radii=())
    net = MeanThresholdNet()
    predictor = make_predictor(net)
    small = cascade.coarse_shape(v.shape[1:], PATCH, cascade.COARSE_FACTOR)
    coarse_windows = len(window_starts([max(n, p) for n, p in zip(small, PATCH)], PATCH, 0.5))
    result = cascade.predict_cascade(predictor, v, SPACING_XYZ)
    assert result.shape == v.shape[1:] and result.dtype == np.uint8 and not result.any()
    assert net.windows == coarse_windows


def test_candidate_region_dilates_by_margin_in_mm() -> None:
    probs = np.zeros((1, 10, 10, 10), np.float32)
    probs[0, 5, 5, 5] = 0.5
    region = cascade.candidate_region(probs, (20, 20, 20), (3.0, 3.0, 3.0), threshold=0.1, margin_mm=6.0)
    # coarse voxels within 6 mm (2 voxels) of (5, 5, 5), each mapped to 2 full voxels
    zs = np.flatnonzero(region[:, 10, 10])
    assert zs.min() == 6 and zs.max() == 15
    assert not cascade.candidate_region(probs * 0, (20, 20, 20), (3.0, 3.0, 3.0)).any()


def test_predict_labels_exhaustive_when_cascade_off() -> None:
    v = phantom()
    net = MeanThresholdNet()
    predictor = make_predictor(net)
    exhaustive = predictor.predict(v)
    windows = net.windows
    net.windows = 0
    np.testing.assert_array_equal(cascade.predict_labels(predictor, v, SPACING_XYZ, cascade=False), exhaustive)
    assert net.windows == windows


@pytest.mark.parametrize("flag", ["--cascade", "--no-cascade"])
def test_cli_backend_and_cascade_flags(tmp_path, flag, monkeypatch, make_sphere_image) -> None:
    from tumorseg_core.cli import main

    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    package = make_tiny_package(tmp_path / "pkg")
    image, _ = make_sphere_image(radius_mm=8.0, size_xyz=(40, 40, 36), spacing=(1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "in.nii.gz"))
    seen: list[tuple] = []
    real = cascade.predict_labels
    def spy(predictor, volume, spacing, use, **kw):
        seen.append((predictor.backend, use))
        return real(predictor, volume, spacing, use, **kw)

    monkeypatch.setattr(cascade, "predict_labels", spy)
    out = tmp_path / "out.nii.gz"
    assert main(["segment", str(tmp_path / "in.nii.gz"), "-o", str(out), "--model", str(package),
                 "--device", "cpu", "--backend", "torch", flag]) == 0
    assert seen == [("torch", flag == "--cascade")]
    assert sitk.ReadImage(str(out)).GetSize() == image.GetSize()


class InputRangeNet(MeanThresholdNet):
    """MeanThresholdNet that also records the range of every batch it is given."""

    def __init__(self, threshold: float) -> None:
        super().__init__(threshold)
        self.ranges: list[tuple[float, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.ranges.append((float(x.min()), float(x.max())))
        return super().forward(x)


def test_input_clip_applies_to_the_coarse_pass_only() -> None:
    v = phantom()
    v[0, :, :, :8] = -5.0  # "air": far below the tissue range, as z-scored CT has
    v[0, 30, 40, 20] = 9.0  # a very bright voxel inside a lesion
    coarse_net, fine_net = InputRangeNet(0.3), InputRangeNet(0.5)
    result = cascade.predict_cascade(make_predictor(fine_net), v, SPACING_XYZ, coarse_predictor=make_predictor(coarse_net),
                                     input_clip=(-2.0, 4.0))
    assert min(lo for lo, _ in coarse_net.ranges) >= -2.0 and max(hi for _, hi in coarse_net.ranges) <= 4.0
    assert min(lo for lo, _ in fine_net.ranges) == -5.0  # the full-resolution windows see the volume as it is
    unclipped_net = InputRangeNet(0.3)
    cascade.predict_cascade(make_predictor(InputRangeNet(0.5)), v, SPACING_XYZ,
                            coarse_predictor=make_predictor(unclipped_net))
    assert min(lo for lo, _ in unclipped_net.ranges) < -2.0
    assert result.any()
