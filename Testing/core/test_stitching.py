"""Streaming stitching (BandStitcher) gives exactly the labels of full-volume sums."""

from __future__ import annotations

import numpy as np
import pytest

from tumorseg_core.inference.sliding_window import SlabWeights, gaussian_weights, window_starts
from tumorseg_core.inference.stitching import BandStitcher, labels_from_sums


def _full_labels(shape, patch, starts, outputs, output_type, values):
    """Reference: full-volume sums and weights, then labels."""
    sums = np.zeros((outputs[0].shape[0], *shape), np.float32)
    weight = np.zeros(shape, np.float32)
    gauss = gaussian_weights(patch)
    pz, py, px = patch
    for (z, y, x), out in zip(starts, outputs):
        sums[:, z:z + pz, y:y + py, x:x + px] += out
        weight[z:z + pz, y:y + py, x:x + px] += gauss
    return labels_from_sums(sums, weight, output_type, values)


@pytest.mark.parametrize("output_type,channels", [("softmax", 1), ("softmax", 3), ("sigmoid", 2)])
@pytest.mark.parametrize("seed", range(4))
def test_band_stitcher_equals_full_volume_sums(output_type, channels, seed):
    rng = np.random.default_rng(seed)
    patch = (8, 6, 6)
    shape = (int(rng.integers(8, 40)), 14, 13)
    starts = window_starts(shape, patch, float(rng.choice([0.0, 0.25, 0.5])))
    if seed % 2:  # gaps: a random subset of the windows (as a region or ROI windows leave)
        starts = [s for s in starts if rng.uniform() < 0.6] or starts[:1]
    gauss = gaussian_weights(patch)
    outputs = []
    for _ in starts:
        probs = rng.dirichlet(np.ones(channels + 1), size=patch).transpose(3, 0, 1, 2)[1:] if output_type == "softmax" \
            else rng.uniform(size=(channels, *patch))
        outputs.append((probs * gauss).astype(np.float32))
    undo = (slice(None), slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    weights = SlabWeights(gauss, starts, undo, shape)
    stitcher = BandStitcher(shape, channels, patch, weights.padded, output_type, [1, 2, 3][:channels])
    for start, out in zip(starts, outputs):
        stitcher.add(start, out)
    expected = _full_labels(shape, patch, starts, outputs, output_type, [1, 2, 3][:channels])
    np.testing.assert_array_equal(stitcher.result(), expected)


def test_band_stitcher_refuses_windows_out_of_z_order():
    patch = (4, 4, 4)
    stitcher = BandStitcher((12, 4, 4), 1, patch, lambda a, b: np.ones((b - a, 4, 4), np.float32), "softmax", [1])
    stitcher.add((8, 0, 0), np.zeros((1, *patch), np.float32))
    with pytest.raises(ValueError, match="z order"):
        stitcher.add((0, 0, 0), np.zeros((1, *patch), np.float32))


def test_softmax_labels_are_numpy_argmax_including_ties():
    rng = np.random.default_rng(0)
    sums = rng.integers(0, 3, size=(3, 5, 6, 7)).astype(np.float32)  # many exact ties
    weight = sums.sum(axis=0) + rng.integers(0, 3, size=(5, 6, 7)).astype(np.float32)
    expected = np.argmax(np.concatenate([(weight - sums.sum(axis=0))[None], sums]), axis=0)
    np.testing.assert_array_equal(labels_from_sums(sums, weight, "softmax", [1, 2, 3]), expected)
