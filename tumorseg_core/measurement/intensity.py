"""Intensity statistics of the image inside one lesion (HU on CT, the image's own units otherwise)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERCENTILES = (5, 25, 50, 75, 95)


@dataclass(frozen=True)
class IntensityStats:
    """Mean, standard deviation (population, ddof 0), min, max and percentiles (linear interpolation)."""

    mean: float
    sd: float
    min: float
    max: float
    p5: float
    p25: float
    p50: float
    p75: float
    p95: float


def intensity_stats(values: np.ndarray) -> IntensityStats:
    """Statistics of the (n,) voxel values of one lesion (n >= 1)."""
    v = np.asarray(values, dtype=np.float64)
    p = np.percentile(v, PERCENTILES)
    return IntensityStats(float(v.mean()), float(v.std()), float(v.min()), float(v.max()), *(float(x) for x in p))
