"""ROI window placement for the cascade's fine pass, and the Predictor's explicit windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tumorseg_core.inference.predictor import Predictor
from tumorseg_core.inference.roi_windows import (
    axis_window_count,
    box_window_count,
    component_boxes,
    grid_starts_touching,
    roi_window_starts,
    uncovered_voxels,
)
from tumorseg_core.inference.sliding_window import axis_starts, pad_to_window

PATCH = (64, 64, 64)
SHAPE = (107, 171, 171)


def ball(shape, center, radius) -> np.ndarray:
    """(z, y, x) bool ball."""
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius**2


def contains(start, patch, mask) -> bool:
    """Whether the window at ``start`` holds every True voxel of ``mask``."""
    idx = np.argwhere(mask)
    return all(s <= idx[:, a].min() and idx[:, a].max() < s + p for a, (s, p) in enumerate(zip(start, patch)))


def check_valid(mask, starts, patch) -> None:
    """Every mask voxel covered; starts unique and inside the padded volume."""
    padded = pad_to_window(mask[None], patch)[0][0]
    assert uncovered_voxels(padded, starts, patch) == 0
    assert len(set(starts)) == len(starts)
    for s in starts:
        assert all(0 <= v <= d - p for v, d, p in zip(s, padded.shape, patch)), s


def test_single_small_blob_gets_one_window_around_it() -> None:
    mask = ball(SHAPE, (53, 85, 85), 12)
    starts = roi_window_starts(mask, PATCH, 0.25)
    assert len(starts) == 1 and contains(starts[0], PATCH, mask)
    # centred: the blob's box (41..65 on each axis, +42..+44 in y/x) sits mid-window
    assert starts[0] == (21, 53, 53)
    assert len(grid_starts_touching(mask, PATCH, 0.25)) == 6  # what the fixed grid ran


def test_blob_at_the_volume_edge_is_shifted_inside() -> None:
    mask = ball(SHAPE, (2, 168, 5), 6)
    starts = roi_window_starts(mask, PATCH, 0.25)
    assert starts == [(0, SHAPE[1] - 64, 0)]
    assert contains(starts[0], PATCH, mask)


def test_two_far_blobs_get_two_windows_and_two_near_ones_one() -> None:
    far = ball(SHAPE, (20, 20, 20), 5) | ball(SHAPE, (85, 150, 150), 5)
    starts = roi_window_starts(far, PATCH, 0.25)
    assert len(starts) == 2
    assert contains(starts[0], PATCH, ball(SHAPE, (20, 20, 20), 5))
    assert contains(starts[1], PATCH, ball(SHAPE, (85, 150, 150), 5))
    near = ball(SHAPE, (40, 60, 60), 5) | ball(SHAPE, (60, 90, 80), 5)  # separate components
    assert len(component_boxes(near)) == 2
    merged = roi_window_starts(near, PATCH, 0.25)
    assert len(merged) == 1 and contains(merged[0], PATCH, near)


def test_diagonal_neighbours_are_one_component() -> None:
    mask = np.zeros((8, 8, 8), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True
    assert component_boxes(mask) == [((1, 1, 1), (3, 3, 3))]


def test_component_larger_than_the_window_is_tiled() -> None:
    mask = np.zeros(SHAPE, bool)
    mask[10:100, 20:150, 30:60] = True  # 90 x 130 x 30 voxels
    starts = roi_window_starts(mask, PATCH, 0.25)
    check_valid(mask, starts, PATCH)
    assert len(starts) == box_window_count(((10, 20, 30), (100, 150, 60)), PATCH, 0.25) == 2 * 3 * 1
    assert sorted({s[0] for s in starts}) == [10, 36] and sorted({s[1] for s in starts}) == [20, 68, 86]
    assert len(starts) < len(grid_starts_touching(mask, PATCH, 0.25))


def test_volume_smaller_than_the_window_uses_the_padded_grid() -> None:
    mask = ball((20, 40, 30), (10, 20, 15), 3)
    starts = roi_window_starts(mask, (32, 32, 32), 0.5)
    check_valid(mask, starts, (32, 32, 32))
    assert len(starts) == 1 and starts[0][0] == 0 and starts[0][2] == 0  # z, x padded to 32


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_are_covered_with_no_more_windows_than_the_grid(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(20, 90, 3))
    patch = tuple(int(p) for p in rng.choice([8, 16, 24, 32], 3))
    overlap = float(rng.choice([0.0, 0.25, 0.5]))
    mask = np.zeros(shape, bool)
    for _ in range(int(rng.integers(1, 8))):
        center = [int(rng.integers(0, n)) for n in shape]
        mask |= ball(shape, center, int(rng.integers(1, 15)))
    starts = roi_window_starts(mask, patch, overlap)
    check_valid(mask, starts, patch)
    padded = pad_to_window(mask[None], patch)[0][0]
    assert 1 <= len(starts) <= len(grid_starts_touching(padded, patch, overlap))


def test_empty_mask_gives_no_window() -> None:
    assert roi_window_starts(np.zeros((30, 30, 30), bool), (16, 16, 16), 0.5) == []


class PointwiseNet(nn.Module):
    """Logits (0, x - 0.5) per voxel: the same answer in any window; counts windows."""

    def __init__(self) -> None:
        super().__init__()
        self.windows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return torch.cat([torch.zeros_like(x), x - 0.5], dim=1)


def noise(shape) -> np.ndarray:
    """(1, z, y, x) uniform values at least 0.01 away from the 0.5 threshold."""
    v = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    return np.where(np.abs(v - 0.5) < 0.01, v + 0.02, v).astype(np.float32)


def test_predict_with_explicit_windows_matches_the_exhaustive_pass_in_the_region() -> None:
    shape = (40, 50, 45)
    v = noise(shape)
    region = ball(shape, (10, 12, 30), 5) | ball(shape, (30, 38, 10), 7)
    net = PointwiseNet()
    predictor = Predictor([net], (16, 16, 16), 2, device="cpu", overlap=0.5, window_batch=3)
    starts = roi_window_starts(region, (16, 16, 16), 0.5)
    labels = predictor.predict(v, region=region, starts=starts)
    assert net.windows == len(starts) == 2
    np.testing.assert_array_equal(labels, (v[0] > 0.5) & region)


def test_explicit_windows_are_checked() -> None:
    v = noise((20, 20, 20))
    predictor = Predictor([PointwiseNet()], (16, 16, 16), 2, device="cpu")
    region = np.zeros((20, 20, 20), bool)
    region[18, 18, 18] = True
    with pytest.raises(ValueError, match="uncovered"):
        predictor.predict(v, region=region, starts=[(0, 0, 0)])
    with pytest.raises(ValueError, match="within"):
        predictor.predict(v, region=region, starts=[(5, 0, 0)])
    assert predictor.predict(v, region=region, starts=[(4, 4, 4)])[18, 18, 18] == (v[0, 18, 18, 18] > 0.5)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.625, 0.75, 0.9])
def test_window_counts_used_for_merging_match_the_placed_windows(overlap: float) -> None:
    for window in (1, 2, 7, 16, 64):
        for length in range(1, window * 4):
            expected = 1 if length <= window else len(axis_starts(length, window, overlap))
            assert axis_window_count(length, window, overlap) == expected, (length, window, overlap)
