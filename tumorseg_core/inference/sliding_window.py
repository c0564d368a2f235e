"""Pure numpy helpers for sliding-window inference (no torch).

The tiling follows nnU-Net's ``compute_steps_for_sliding_window``: the number of
windows along an axis is the smallest that keeps the requested overlap, and the starts
are then spread *evenly* so the last window ends flush with the volume (no window
hangs over the edge, none is wasted). Windows are blended with a separable Gaussian
(sigma = ``sigma_scale`` x window, nnU-Net and MONAI use 1/8) because predictions are
least reliable at a window's border, where the network saw the least context.

All shapes here are in array order **(z, y, x)**.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")

# Floor for the Gaussian weights, as MONAI's compute_importance_map (1e-3): the exact
# Gaussian never reaches 0, but a small sigma_scale underflows float32 in a window's
# corner, and a zero weight would make a voxel covered only by corners divide 0 by 0.
# The same floor as MONAI keeps our blended probabilities equal to MONAI's.
_MIN_WEIGHT = 1e-3

# Guards ceil() against float noise such as 2.0000000000000004 windows.
_EPS = 1e-9


def _check_zyx(name: str, values: Sequence[int]) -> tuple[int, int, int]:
    """Return ``values`` as a 3-tuple of positive ints, or raise ``ValueError``."""
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 entries (z, y, x), got {tuple(values)}")
    out = tuple(int(v) for v in values)
    if min(out) < 1:
        raise ValueError(f"{name} entries must be >= 1, got {out}")
    return out  # type: ignore[return-value]


def axis_starts(dim: int, window: int, overlap: float) -> list[int]:
    """Window start indices along one axis of length ``dim`` (requires ``dim >= window``).

    The same grid as MONAI's ``sliding_window_inference``: a whole-voxel step
    ``int(window * (1 - overlap))`` (at least 1), starts ``0, step, 2 step, ...`` and the
    last window moved back to end flush with the axis. Using MONAI's grid (rather than
    spreading the starts evenly, as nnU-Net does; neither is more accurate) means a
    model gives the same label map here as under MONAI, which users compare against.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if dim < window:
        raise ValueError(f"axis of length {dim} is smaller than the window {window}; pad it first")
    if dim == window:
        return [0]
    # A step below one voxel (window 1 with any overlap, e.g. 2D-style z windows)
    # would only repeat identical windows.
    step = max(int(window * (1.0 - overlap) + _EPS), 1)
    n = math.ceil((dim - window) / step) + 1
    return [min(i * step, dim - window) for i in range(n)]


def window_starts(
    shape_zyx: Sequence[int], window_zyx: Sequence[int], overlap: float
) -> list[tuple[int, int, int]]:
    """All window start corners (z, y, x) tiling a volume of ``shape_zyx``.

    Every voxel is covered; the first start on each axis is 0 and the last is
    ``shape - window`` (flush with the end). ``shape_zyx`` must be >= ``window_zyx`` on
    every axis (use :func:`pad_to_window` first). Ordered z-major, then y, then x.
    """
    shape = _check_zyx("shape_zyx", shape_zyx)
    window = _check_zyx("window_zyx", window_zyx)
    per_axis = [axis_starts(d, w, overlap) for d, w in zip(shape, window)]
    return [tuple(s) for s in itertools.product(*per_axis)]  # type: ignore[misc]


def gaussian_weights(window_zyx: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Blending weights of shape ``window_zyx`` (float32), largest at the centre, all >= 1e-3.

    MONAI's ``compute_importance_map(mode="gaussian")``: a product of 1-D Gaussians
    ``exp(-x^2 / (2 sigma^2))`` centred at ``(w - 1) / 2`` (symmetric for even sizes too;
    the maximum is then slightly below 1), sigma = ``sigma_scale * w``, floored at 1e-3.
    An axis of size 1 gets weight 1.
    """
    window = _check_zyx("window_zyx", window_zyx)
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
    profiles = []
    for w in window:
        coords = np.arange(w, dtype=np.float64) - (w - 1) / 2.0
        sigma = sigma_scale * w
        profile = np.exp(-0.5 * (coords / sigma) ** 2)
        profiles.append(profile)
    weights = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    return np.maximum(weights, _MIN_WEIGHT).astype(np.float32)


def pad_to_window(
    array: np.ndarray,
    window_zyx: Sequence[int],
    size_divisor: int | Sequence[int] = 1,
    value: float = 0.0,
) -> tuple[np.ndarray, tuple[object, ...]]:
    """Pad the spatial axes of ``array`` (C, z, y, x) to at least ``window_zyx``.

    Each spatial axis smaller than the window is padded to the window size, then (if
    ``size_divisor`` > 1) up to a multiple of the divisor; padding is constant
    (``value``) and centred, the odd voxel going after. Axes already large enough are
    left alone. Returns ``(padded, undo)`` where ``padded[undo]`` (or
    ``result_zyx[undo]``, since ``undo`` starts with ``...``) is the original extent.
    ``padded`` is ``array`` itself when nothing needed padding.
    """
    if array.ndim != 4:
        raise ValueError(f"expected a (C, z, y, x) array, got shape {array.shape}")
    window = _check_zyx("window_zyx", window_zyx)
    if isinstance(size_divisor, int):
        divisor = (size_divisor,) * 3
    else:
        divisor = _check_zyx("size_divisor", size_divisor)
    if min(divisor) < 1:
        raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")

    pads = [(0, 0)]
    undo: list[object] = [Ellipsis]
    for dim, w, div in zip(array.shape[1:], window, divisor):
        target = max(dim, w)
        if target > dim:
            # Only padded axes are rounded up: an axis already >= the window is tiled
            # by windows of exactly the window size, which the divisor already divides.
            target = int(math.ceil(target / div) * div)
        before = (target - dim) // 2
        pads.append((before, target - dim - before))
        undo.append(slice(before, before + dim))
    if all(p == (0, 0) for p in pads):
        return array, tuple(undo)
    padded = np.pad(array, pads, mode="constant", constant_values=value)
    return padded, tuple(undo)


def batched(iterable: Iterable[T], n: int) -> Iterator[list[T]]:
    """Yield lists of ``n`` consecutive items (the last one may be shorter)."""
    if n < 1:
        raise ValueError(f"batch size must be >= 1, got {n}")
    iterator = iter(iterable)
    while True:
        chunk = list(itertools.islice(iterator, n))
        if not chunk:
            return
        yield chunk


class SlabWeights:
    """The stitching weight map (sum of the window Gaussians per voxel), made slab by slab.

    Holding it as a full float32 (Z, Y, X) map cost 4 bytes per model-grid voxel for
    numbers that follow from the window positions alone. :meth:`slab` adds the same
    Gaussians in the same window order as stitching would, so the values are identical.

    Args:
        gaussian: (pz, py, px) window weights.
        starts: window corners (z, y, x) on the padded grid, in stitching order.
        undo: the ``pad_to_window`` undo tuple (``..., z slice, y slice, x slice``).
        padded_shape: (Z, Y, X) of the padded grid.
    """

    def __init__(self, gaussian: np.ndarray, starts: Sequence[tuple[int, int, int]], undo: tuple[object, ...],
                 padded_shape: Sequence[int]) -> None:
        self.gaussian = gaussian
        self.starts = list(starts)
        self.crop = tuple(undo[1:])  # y and x slices are applied per slab, z via the offset
        self.z_offset = int(self.crop[0].start or 0)  # type: ignore[union-attr]
        self.padded_shape = tuple(int(n) for n in padded_shape)

    def slab(self, z0: int, z1: int) -> np.ndarray:
        """Weights (z1 - z0, y, x) float32 of unpadded slices z0:z1 (y, x unpadded too)."""
        out = self.padded(z0 + self.z_offset, z1 + self.z_offset)
        return out[(slice(None),) + self.crop[1:]]  # type: ignore[operator]

    def padded(self, lo: int, hi: int) -> np.ndarray:
        """Weights (hi - lo, Y, X) float32 of padded slices lo:hi, on the whole padded y, x."""
        pz, py, px = self.gaussian.shape
        out = np.zeros((hi - lo, *self.padded_shape[1:]), dtype=np.float32)
        for z, y, x in self.starts:
            a, b = max(z, lo), min(z + pz, hi)
            if a < b:
                out[a - lo : b - lo, y : y + py, x : x + px] += self.gaussian[a - z : b - z]
        return out
