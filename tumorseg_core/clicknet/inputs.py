"""The click network's input channels, built the same way in training and in use.

From a cube of raw intensities (:mod:`.grid`) and the clicks on it:

0. the cube normalised by its median and robust spread (half the 5-95 % range), clipped to +-5:
   the scene, whatever the modality's units;
1. the cube normalised around the first foreground click: minus the median within
   :data:`LOCAL_REF_MM` of it, over the median absolute deviation within :data:`LOCAL_SPREAD_MM`,
   clipped to +-8 and divided by 4: a lesion 10 HU from brain in a head CT, invisible next to
   bone on the scene's scale, stands out here;
2. foreground clicks and 3. background clicks, each a Gaussian of :data:`CLICK_SIGMA_MM`;
4. the previous result (0..1), zero before the first click.

numpy only; arrays are (z, y, x), click positions continuous (z, y, x) indices of the cube.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

CHANNELS = 5
CLICK_SIGMA_MM = 3.0
LOCAL_REF_MM = 4.0
LOCAL_SPREAD_MM = 20.0
SPREAD_FLOOR = 0.005  # of the scene's 5-95 % range: a flat phantom region does not divide by zero


def _ball(shape: Sequence[int], centre: Sequence[float], radius_vox: float) -> np.ndarray:
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius_vox ** 2


def scene(raw: np.ndarray) -> np.ndarray:
    lo, med, hi = np.percentile(raw, (5.0, 50.0, 95.0))
    scale = max(0.5 * float(hi - lo), 1e-6 * max(abs(float(med)), 1.0), 1e-12)
    return np.clip((raw - med) / scale, -5.0, 5.0).astype(np.float32)


def local(raw: np.ndarray, centre: Sequence[float], voxel_mm: float) -> np.ndarray:
    ref = float(np.median(raw[_ball(raw.shape, centre, max(LOCAL_REF_MM / voxel_mm, 1.0))]))
    near = raw[_ball(raw.shape, centre, LOCAL_SPREAD_MM / voxel_mm)]
    spread = 1.4826 * float(np.median(np.abs(near - np.median(near))))
    lo, hi = np.percentile(raw, (5.0, 95.0))
    spread = max(spread, SPREAD_FLOOR * float(hi - lo), 1e-12)
    return (np.clip((raw - ref) / spread, -8.0, 8.0) / 4.0).astype(np.float32)


def click_map(shape: Sequence[int], clicks: Sequence[Sequence[float]], voxel_mm: float) -> np.ndarray:
    out = np.zeros(tuple(shape), dtype=np.float32)
    s2 = 2.0 * (CLICK_SIGMA_MM / voxel_mm) ** 2
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    for c in clicks:
        g = np.exp(-(((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / s2)).astype(np.float32)
        np.maximum(out, g, out=out)
    return out


def encode(raw: np.ndarray, voxel_mm: float, fg: Sequence[Sequence[float]], bg: Sequence[Sequence[float]] = (),
           previous: Optional[np.ndarray] = None) -> np.ndarray:
    """Input channels (:data:`CHANNELS`, z, y, x) float32 of a raw cube and its clicks (``fg`` not empty)."""
    if not len(fg):
        raise ValueError("the click network needs a foreground click")
    prev = np.zeros(raw.shape, np.float32) if previous is None else previous.astype(np.float32)
    return np.stack([scene(raw), local(raw, fg[0], voxel_mm), click_map(raw.shape, fg, voxel_mm),
                     click_map(raw.shape, bg, voxel_mm), prev])
