"""Tests for the pure sliding-window helpers and flip TTA."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tumorseg_core.inference.sliding_window import (
    axis_starts,
    batched,
    gaussian_weights,
    pad_to_window,
    window_starts,
)
from tumorseg_core.inference.tta import flip_axes_combinations, predict_with_flips


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.625, 0.75, 0.9])
def test_axis_starts_cover_every_voxel_on_monais_grid(overlap: float) -> None:
    for window in (1, 2, 3, 7, 16, 32):
        for dim in range(window, window * 4 + 5):
            starts = axis_starts(dim, window, overlap)
            assert starts[0] == 0
            assert starts[-1] == dim - window, (dim, window, overlap)
            assert starts == sorted(set(starts))
            covered = np.zeros(dim, dtype=int)
            for s in starts:
                covered[s : s + window] += 1
            assert covered.min() >= 1, (dim, window, overlap, starts)
            # MONAI's grid: whole-voxel steps int(window * (1 - overlap)), the last
            # window pulled back flush with the end (dense_patch_slices).
            step = max(int(window * (1 - overlap) + 1e-9), 1)
            assert starts[:-1] == [i * step for i in range(len(starts) - 1)]
            assert 0 < starts[-1] - starts[-2] <= step if len(starts) > 1 else True
            expected_n = 1 if dim == window else int(np.ceil((dim - window) / step)) + 1
            assert len(starts) == expected_n


def test_window_starts_cover_3d_volume() -> None:
    rng = np.random.default_rng(0)
    for _ in range(25):
        window = tuple(int(w) for w in rng.integers(1, 9, size=3))
        shape = tuple(w + int(e) for w, e in zip(window, rng.integers(0, 20, size=3)))
        overlap = float(rng.choice([0.0, 0.25, 0.5, 0.7]))
        starts = window_starts(shape, window, overlap)
        covered = np.zeros(shape, dtype=int)
        for z, y, x in starts:
            covered[z : z + window[0], y : y + window[1], x : x + window[2]] += 1
        assert covered.min() >= 1
        assert starts[0] == (0, 0, 0)
        assert starts[-1] == tuple(s - w for s, w in zip(shape, window))
        assert len(starts) == len(set(starts))


def test_window_starts_known_values() -> None:
    # 64 voxels, window 32, overlap 0.5 -> 3 windows at 0, 16, 32
    assert axis_starts(64, 32, 0.5) == [0, 16, 32]
    assert axis_starts(50, 32, 0.5) == [0, 16, 18]  # the last one pulled back, as MONAI does
    assert axis_starts(32, 32, 0.5) == [0]
    assert window_starts((1, 40, 32), (1, 32, 32), 0.0) == [(0, 0, 0), (0, 8, 0)]


def test_window_grid_and_weights_are_monais() -> None:
    """Same windows and Gaussian as monai.inferers.sliding_window_inference, so a model gives
    MONAI's label map (benchmarks/cpu_vs_monai.py measures Dice 0.9996 on mri256)."""
    monai_utils = pytest.importorskip("monai.data.utils")
    from monai.inferers.utils import _get_scan_interval

    rng = np.random.default_rng(3)
    for _ in range(40):
        window = tuple(int(w) for w in rng.integers(2, 40, size=3))
        shape = tuple(w + int(e) for w, e in zip(window, rng.integers(0, 90, size=3)))
        overlap = float(rng.choice([0.0, 0.25, 0.5, 0.625, 0.75]))
        interval = _get_scan_interval(shape, window, 3, (overlap,) * 3)
        theirs = monai_utils.dense_patch_slices(shape, window, interval, return_slice=False)
        assert sorted(tuple(int(lo) for lo, _ in s) for s in theirs) == window_starts(shape, window, overlap)
    for window, sigma in (((64, 64, 64), 0.125), ((96, 80, 8), 0.125), ((32, 32, 32), 0.05)):
        theirs = monai_utils.compute_importance_map(window, mode="gaussian", sigma_scale=sigma).numpy()
        np.testing.assert_allclose(gaussian_weights(window, sigma), theirs, rtol=1e-5, atol=1e-7)


def test_window_starts_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        window_starts((10, 10, 10), (16, 8, 8), 0.5)  # smaller than the window
    with pytest.raises(ValueError):
        window_starts((10, 10, 10), (8, 8, 8), 1.0)
    with pytest.raises(ValueError):
        window_starts((10, 10), (8, 8), 0.5)


@pytest.mark.parametrize("window", [(32, 32, 32), (1, 16, 24), (5, 6, 7), (2, 2, 2)])
def test_gaussian_weights(window: tuple[int, int, int]) -> None:
    w = gaussian_weights(window)
    assert w.shape == window
    assert w.dtype == np.float32
    assert w.min() >= 1e-3
    assert w.max() <= 1.0  # 1 for odd sizes; for even ones the centre falls between voxels
    # symmetric under every flip, largest at the centre, smallest in the corners
    for axis in range(3):
        np.testing.assert_allclose(w, np.flip(w, axis), rtol=1e-6)
    centre = tuple((s - 1) // 2 for s in window)
    assert w[centre] == w.max()
    assert w[0, 0, 0] == w.min()


def test_gaussian_weights_tiny_sigma_stays_positive() -> None:
    w = gaussian_weights((32, 32, 32), sigma_scale=0.01)
    assert w.min() > 0 and np.isfinite(w).all()


@pytest.mark.parametrize(
    "shape,window,divisor",
    [((2, 10, 20, 30), (16, 16, 16), 1), ((1, 50, 61, 47), (32, 32, 32), 1),
     ((3, 1, 5, 9), (1, 16, 16), 1), ((1, 7, 9, 11), (8, 8, 8), 16), ((1, 33, 5, 5), (32, 8, 8), (1, 1, 1))],
)
def test_pad_to_window_round_trip(shape, window, divisor) -> None:
    array = np.random.default_rng(1).random(shape, dtype=np.float32)
    padded, undo = pad_to_window(array, window, size_divisor=divisor)
    divisors = (divisor,) * 3 if isinstance(divisor, int) else divisor
    for dim, w, div, p in zip(shape[1:], window, divisors, padded.shape[1:]):
        # padded axes become the window rounded up to the divisor; others are untouched
        assert p == (dim if dim >= w else -(-w // div) * div)
    np.testing.assert_array_equal(padded[undo], array)
    # the undo slices also apply to a (z, y, x) map on the padded grid
    assert padded[0][undo].shape == shape[1:]
    # padding is centred and constant zero
    if padded.shape != array.shape:
        assert padded.sum() == pytest.approx(array.sum(), rel=1e-5)


def test_pad_to_window_is_centred_and_no_copy_when_big_enough() -> None:
    array = np.ones((1, 4, 40, 40), dtype=np.float32)
    padded, undo = pad_to_window(array, (8, 32, 32))
    assert padded.shape == (1, 8, 40, 40)
    assert undo[1] == slice(2, 6)
    big = np.ones((1, 40, 40, 40), dtype=np.float32)
    same, _ = pad_to_window(big, (8, 8, 8))
    assert same is big


def test_batched() -> None:
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 2)) == []
    with pytest.raises(ValueError):
        list(batched(range(3), 0))


def test_flip_axes_combinations() -> None:
    combos = flip_axes_combinations((2, 3, 4))
    assert combos[0] == ()
    assert len(combos) == 8 and len(set(combos)) == 8
    assert set(combos) == {c for k in range(4) for c in itertools.combinations((2, 3, 4), k)}
    assert flip_axes_combinations((3, 4)) == [(), (3,), (4,), (3, 4)]
    assert flip_axes_combinations((2, 3, 4), max_passes=1) == [()]
    assert len(flip_axes_combinations((2, 3, 4), max_passes=4)) == 4


def test_predict_with_flips_flips_back() -> None:
    batch = torch.rand(2, 1, 3, 4, 5)
    # an equivariant fn gives exactly its plain output
    torch.testing.assert_close(predict_with_flips(lambda t: t * 2, batch), batch * 2)
    # a position-dependent fn: adding an x ramp, averaged with its mirror, flattens it
    ramp = torch.arange(5, dtype=torch.float32).view(1, 1, 1, 1, 5)
    out = predict_with_flips(lambda t: t + ramp, batch, [(), (4,)])
    torch.testing.assert_close(out, batch + 2.0)
    # without flipping back, the result would not be aligned with the input
    assert not torch.allclose(predict_with_flips(lambda t: t, batch, [(4,)]), torch.flip(batch, (4,)))
