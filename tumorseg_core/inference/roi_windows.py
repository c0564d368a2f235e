"""Window placement for the ROI cascade's fine pass (pure numpy/scipy, no torch).

The exhaustive grid (:func:`~tumorseg_core.inference.sliding_window.window_starts`)
is fixed by the volume, so a small lesion usually straddles grid lines and touches 4-8
of its windows. Here windows follow the candidates instead, as nnU-Net does for its
ROI crops: every 26-connected component of the candidate mask gets its bounding box,
each box is tiled on its own with the fewest windows that keep the overlap (a box no
larger than the window gets ONE window centred on it), boxes are merged when their
union needs fewer windows than the two apart, and identical windows are run once.
The grid filtered to windows touching the mask is kept as a fallback whenever it is
the cheaper of the two, so the fine pass never runs more windows than before.

All shapes and coordinates are in array order **(z, y, x)**. Window starts are on the
grid padded by :func:`~tumorseg_core.inference.sliding_window.pad_to_window` (the
predictor's grid; identical to the volume's when every axis is >= the window).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from tumorseg_core.inference.sliding_window import axis_starts, pad_to_window, window_starts

logger = logging.getLogger(__name__)

Box = tuple[tuple[int, int, int], tuple[int, int, int]]  # (lo, hi), hi exclusive
Start = tuple[int, int, int]


def component_boxes(mask: np.ndarray) -> list[Box]:
    """Bounding boxes (lo, hi) of the 26-connected components of a (z, y, x) bool mask."""
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return []
    boxes = []
    for slices in ndimage.find_objects(labels):
        boxes.append((tuple(s.start for s in slices), tuple(s.stop for s in slices)))
    return boxes  # type: ignore[return-value]


def axis_window_count(length: int, window: int, overlap: float) -> int:
    """Windows needed along one axis to tile ``length`` voxels (1 when ``length <= window``)."""
    # Counted from axis_starts itself, so the merge decisions always match the placement.
    return 1 if length <= window else len(axis_starts(length, window, overlap))


def box_window_count(box: Box, patch_zyx: Sequence[int], overlap: float) -> int:
    """Windows :func:`box_window_starts` places for ``box`` (product of the axis counts)."""
    lo, hi = box
    return math.prod(axis_window_count(h - lo_, p, overlap) for lo_, h, p in zip(lo, hi, patch_zyx))


def _axis_box_starts(lo: int, hi: int, window: int, dim: int, overlap: float) -> list[int]:
    """Starts along one axis covering [lo, hi) inside an axis of length ``dim >= window``."""
    if hi - lo > window:
        # The sliding-window grid of the box itself: first flush with lo, last with hi.
        return [lo + s for s in axis_starts(hi - lo, window, overlap)]
    # One window centred on the box; floor((lo + hi - window) / 2) <= lo and the window
    # still reaches hi, and clamping into [0, dim - window] keeps both true.
    return [min(max((lo + hi - window) // 2, 0), dim - window)]


def box_window_starts(box: Box, patch_zyx: Sequence[int], shape_zyx: Sequence[int], overlap: float) -> list[Start]:
    """Window starts (z, y, x) covering ``box`` inside a (padded) volume of ``shape_zyx``."""
    lo, hi = box
    per_axis = [_axis_box_starts(a, b, p, d, overlap) for a, b, p, d in zip(lo, hi, patch_zyx, shape_zyx)]
    return [tuple(s) for s in itertools.product(*per_axis)]  # type: ignore[misc]


def _union(a: Box, b: Box) -> Box:
    lo = tuple(min(x, y) for x, y in zip(a[0], b[0]))
    hi = tuple(max(x, y) for x, y in zip(a[1], b[1]))
    return lo, hi  # type: ignore[return-value]


def merge_boxes(boxes: Sequence[Box], patch_zyx: Sequence[int], overlap: float) -> list[Box]:
    """Greedily merge box pairs whose union needs strictly fewer windows than both apart.

    Equal counts are not merged: separate windows keep each lesion near a window's
    centre, where the Gaussian weight and the network's context are largest. Passes
    repeat until nothing merges (a merged box may now absorb a third one).
    """
    boxes = list(boxes)
    counts = [box_window_count(b, patch_zyx, overlap) for b in boxes]
    merged = True
    while merged:
        merged = False
        i = 0
        while i < len(boxes):
            j = i + 1
            while j < len(boxes):
                union = _union(boxes[i], boxes[j])
                n = box_window_count(union, patch_zyx, overlap)
                if n < counts[i] + counts[j]:
                    boxes[i], counts[i] = union, n
                    del boxes[j], counts[j]
                    merged = True
                    j = i + 1  # the grown box may now merge with one already passed
                else:
                    j += 1
            i += 1
    return boxes


def grid_starts_touching(mask: np.ndarray, patch_zyx: Sequence[int], overlap: float) -> list[Start]:
    """Exhaustive-grid starts whose window touches a padded (z, y, x) bool ``mask``."""
    pz, py, px = (int(p) for p in patch_zyx)
    starts = window_starts(mask.shape, patch_zyx, overlap)
    return [s for s in starts if mask[s[0] : s[0] + pz, s[1] : s[1] + py, s[2] : s[2] + px].any()]


def uncovered_voxels(mask: np.ndarray, starts: Sequence[Start], patch_zyx: Sequence[int]) -> int:
    """Number of True voxels of a padded (z, y, x) ``mask`` that no window covers."""
    covered = np.zeros(mask.shape, dtype=bool)
    pz, py, px = (int(p) for p in patch_zyx)
    for z, y, x in starts:
        covered[z : z + pz, y : y + py, x : x + px] = True
    return int(np.count_nonzero(mask & ~covered))


def roi_window_starts(mask: np.ndarray, patch_zyx: Sequence[int], overlap: float) -> list[Start]:
    """Few window starts (z, y, x) whose windows cover every True voxel of ``mask``.

    Args:
        mask: candidate region, (z, y, x) bool, on the volume's grid (not padded).
        patch_zyx: window size (z, y, x).
        overlap: overlap fraction in [0, 1) used when a box needs several windows.

    Returns:
        Sorted, unique starts on the grid padded by ``pad_to_window(.., patch_zyx)``;
        each lies in [0, padded - patch] per axis. Empty for an empty mask.

    Raises:
        RuntimeError: if a mask voxel were left uncovered (a bug, never expected).
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    padded = pad_to_window(np.asarray(mask, dtype=bool)[None], patch_zyx)[0][0]
    boxes = merge_boxes(component_boxes(padded), patch_zyx, overlap)
    starts = sorted({s for box in boxes for s in box_window_starts(box, patch_zyx, padded.shape, overlap)})
    grid = grid_starts_touching(padded, patch_zyx, overlap) if starts else []
    if len(grid) < len(starts):
        # Large or scattered candidates: the fixed grid happens to be cheaper here.
        starts = grid
    missing = uncovered_voxels(padded, starts, patch_zyx)
    if missing:
        raise RuntimeError(f"ROI windows leave {missing} candidate voxels uncovered")
    logger.info("ROI windows: %d component box(es) -> %d window(s) (grid touching the mask: %d)",
                len(boxes), len(starts), len(grid))
    return starts


def windows_to_run(padded_shape: Sequence[int], patch_zyx: Sequence[int], overlap: float,
                   region: np.ndarray | None = None, explicit: Sequence[Sequence[int]] | None = None) -> list[Start]:
    """The window starts of one prediction, in z order (what streaming stitching needs).

    ``explicit`` starts (padded grid; checked to lie inside it) if given, else the grid
    windows, restricted to those touching ``region`` ((z, y, x) bool, unpadded) if given.
    """
    if explicit is not None:
        starts = sorted(tuple(int(v) for v in s) for s in explicit)
        if any(len(s) != 3 or not all(0 <= v <= d - p for v, d, p in zip(s, padded_shape, patch_zyx))
               for s in starts):
            raise ValueError(f"window starts must be (z, y, x) within {tuple(padded_shape)} minus the patch")
        return starts  # type: ignore[return-value]
    if region is not None:
        mask, _ = pad_to_window(np.asarray(region, dtype=bool)[None], patch_zyx)
        return grid_starts_touching(mask[0], patch_zyx, overlap)
    return window_starts(padded_shape, patch_zyx, overlap)
