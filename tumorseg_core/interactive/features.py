"""Multi-scale intensity and texture features of a working grid (:mod:`.crop`), for the session's classifier.

Per voxel: Gaussian-smoothed intensity at 1, 2 and 4 mm (a rim and its necrotic core look
alike at 4 mm), local standard deviation at 2 and 4 mm (texture, heterogeneity) and the
gradient magnitude at 1 mm (edges). Intensities are first normalised by the crop's median
and robust spread, so the features do not depend on the modality's units. numpy and scipy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SMOOTH_MM = (1.0, 2.0, 4.0)
STD_MM = (2.0, 4.0)
EDGE_MM = 1.0
NAMES = ("g1", "g2", "g4", "std2", "std4", "grad1")


def normalise(array: np.ndarray) -> np.ndarray:
    """``array`` minus its median over its robust spread (half the 5-95 % range), float32."""
    lo, med, hi = np.percentile(array, (5.0, 50.0, 95.0))
    scale = max(0.5 * float(hi - lo), 1e-6 * max(abs(float(med)), 1.0), 1e-12)
    return ((array - med) / scale).astype(np.float32)


def compute_features(array: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Features (F, z, y, x) float32 of a normalised isotropic crop (z, y, x) with ``voxel_mm`` voxels."""
    x = array.astype(np.float32)
    out = []
    for s in SMOOTH_MM:
        out.append(ndimage.gaussian_filter(x, max(s / voxel_mm, 0.5), mode="nearest"))
    sq = x * x
    for s in STD_MM:
        sigma = max(s / voxel_mm, 0.5)
        mean = ndimage.gaussian_filter(x, sigma, mode="nearest")
        var = ndimage.gaussian_filter(sq, sigma, mode="nearest") - mean * mean
        out.append(np.sqrt(np.maximum(var, 0.0)))
    out.append(ndimage.gaussian_gradient_magnitude(x, max(EDGE_MM / voxel_mm, 0.5), mode="nearest"))
    return np.stack(out).astype(np.float32)
