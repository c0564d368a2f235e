"""The click network's grid: a fixed cube of isotropic voxels centred on a point, in the image's direction.

The network always sees the same field of view (:data:`SIZE` voxels of :data:`VOXEL_MM`) whatever
the scanner's spacing or orientation, so one set of weights serves 1 mm MRI and 7 mm CT slices
alike. The cube is a :class:`tumorseg_core.interactive.crop.Crop`: its result maps back onto the
image's exact grid by the crop's own ``to_image``. Points are LPS mm; arrays are (z, y, x).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from tumorseg_core.interactive.crop import Crop, resample_isotropic

SIZE = 40  # voxels per side (a multiple of 8: the network pools three times)
VOXEL_MM = 2.0  # 80 mm field of view: a 50 mm lesion clicked off-centre still fits


def click_grid(image: sitk.Image, centre_lps: Sequence[float], size: int = SIZE,
               voxel_mm: float = VOXEL_MM) -> Crop:
    """The cube of ``size``^3 voxels of ``voxel_mm`` centred on ``centre_lps``, the image resampled on it
    (linear; outside the image, the nearest voxel's value)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    half = 0.5 * (size - 1) * voxel_mm
    origin = np.asarray(centre_lps, dtype=np.float64) - direction @ np.full(3, half)
    grid, array = resample_isotropic(image, origin, (size,) * 3, voxel_mm)
    corners = [grid.TransformContinuousIndexToPhysicalPoint([a - 0.5, b - 0.5, c - 0.5])
               for a in (0, size) for b in (0, size) for c in (0, size)]
    idx = np.array([image.TransformPhysicalPointToContinuousIndex(p) for p in corners])
    dims = np.asarray(image.GetSize())
    lo = np.clip(np.floor(idx.min(axis=0)), 0, dims - 1).astype(int)
    hi = np.clip(np.ceil(idx.max(axis=0)) + 1, lo + 1, dims).astype(int)
    return Crop(grid, array, lo, hi)
