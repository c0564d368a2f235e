"""A 2D network's plane in tiles of its training patch, blended with Gaussian weights.

A 2.5D network (instance-normalised) is trained on ``(y, x)`` patches of the training
configuration's size, zero-padded where a case is smaller. Run on a whole plane of another
size (or padded with edge values) its normalisation statistics change and so do its
answers. Slice mode (:mod:`tumorseg_core.inference.slice_mode`) and the trainer's
validation (:mod:`tumorseg_core.training.validation`) therefore both run a plane the way
the 3D path runs a volume: tiles of the patch size at a fixed overlap, zero padding where
the plane is smaller than a tile, each tile's softmax weighted by a Gaussian (sigma 1/8 of
the tile, as the sliding window) and the weighted mean taken.

numpy only; the network is a callable the caller supplies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

SIGMA_SCALE = 0.125  # the Gaussian's sigma as a fraction of the tile (the sliding window's)
MIN_WEIGHT = 1e-3  # floor of the weights at a tile's corners (every pixel counts somewhere)


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """First indices of the tiles covering ``size`` pixels with ``tile``-pixel tiles (last one flush)."""
    if size <= tile:
        return [0]
    step = max(int(round(tile * (1.0 - overlap))), 1)
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def gaussian_weights(tile_hw: Sequence[int]) -> np.ndarray:
    """(H, W) float32 Gaussian importance of a tile, 1 at the centre, at least :data:`MIN_WEIGHT`."""
    axes = []
    for n in tile_hw:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        axes.append(np.exp(-0.5 * (x / max(SIGMA_SCALE * n, 1e-6)) ** 2))
    w = np.outer(axes[0], axes[1])
    return np.maximum(w / w.max(), MIN_WEIGHT).astype(np.float32)


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax of float logits along ``axis`` (float32)."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted, dtype=np.float32)
    return e / e.sum(axis=axis, keepdims=True)


def tile_corners(plane: np.ndarray, tile_hw: Sequence[int], overlap: float) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``(plane zero-padded to at least one tile (C, H', W'), the tiles' top-left corners)``."""
    h, w = plane.shape[1:]
    th, tw = (int(v) for v in tile_hw)
    ph, pw = max(th - h, 0), max(tw - w, 0)
    padded = np.pad(plane, ((0, 0), (0, ph), (0, pw))) if ph or pw else plane
    hh, ww = padded.shape[1:]
    return padded, [(y, x) for y in tile_starts(hh, th, overlap) for x in tile_starts(ww, tw, overlap)]


def plane_tiles(plane: np.ndarray, tile_hw: Sequence[int], overlap: float) -> np.ndarray:
    """Every tile of ``plane`` (C, H, W) as :func:`tiled_probabilities` runs them: (n, C, th, tw) float32."""
    th, tw = (int(v) for v in tile_hw)
    padded, corners = tile_corners(plane, tile_hw, overlap)
    return np.stack([padded[:, y:y + th, x:x + tw] for y, x in corners]).astype(np.float32, copy=False)


def tiled_probabilities(
    plane: np.ndarray,
    tile_hw: Sequence[int],
    overlap: float,
    run: Callable[[np.ndarray], np.ndarray],
    batch: int = 1,
) -> np.ndarray:
    """Class probabilities ``(K, H, W)`` of ``plane`` ``(C, H, W)`` float32, tile by tile.

    ``run`` maps a batch of tiles ``(n, C, th, tw)`` float32 to their softmax probabilities
    ``(n, K, th, tw)``; ``batch`` tiles go in one call. A plane smaller than a tile along an
    axis is zero-padded to the tile there (as training pads its patches) and cut back.
    """
    h, w = plane.shape[1:]
    th, tw = (int(v) for v in tile_hw)
    padded, corners = tile_corners(plane, tile_hw, overlap)
    hh, ww = padded.shape[1:]
    weights = gaussian_weights((th, tw))
    total = None
    norm = np.zeros((hh, ww), dtype=np.float32)
    for first in range(0, len(corners), max(int(batch), 1)):
        group = corners[first:first + max(int(batch), 1)]
        tiles = np.stack([padded[:, y:y + th, x:x + tw] for y, x in group]).astype(np.float32, copy=False)
        probs = run(np.ascontiguousarray(tiles))
        if total is None:
            total = np.zeros((probs.shape[1], hh, ww), dtype=np.float32)
        for (y, x), p in zip(group, probs):
            total[:, y:y + th, x:x + tw] += p * weights
            norm[y:y + th, x:x + tw] += weights
    assert total is not None
    return (total / norm)[:, :h, :w]
