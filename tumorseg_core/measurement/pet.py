"""PET metrics of one lesion on an SUV image: SUVmax, SUVmean, SUVpeak, MTV and TLG.

- **SUVpeak**: the highest mean SUV in a 1 mL sphere (radius (3/(4π))^(1/3) cm ≈ 6.20 mm)
  whose centre is a voxel **of the lesion** (centres are restricted to the lesion; the
  sphere itself takes every image voxel whose centre lies within the radius, inside the
  lesion or not). Near the image border the mean is over the sphere's voxels that exist.
  Computed as a convolution with a spherical kernel built in physical space (spacing and
  direction), so it is exact on the voxel grid.
- **MTV41**: volume (mL) of the lesion's voxels with SUV >= 41 % of the lesion's SUVmax;
  **MTV2.5**: of those with SUV >= 2.5. Both stay within the lesion.
- **TLG** = MTV (mL) × SUVmean within that MTV, for each threshold (0 when the MTV is empty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage, signal

from tumorseg_core.measurement.lesions import Lesion
from tumorseg_core.measurement.physical import Physical

#: Radius (mm) of a 1 mL sphere.
SUVPEAK_RADIUS_MM = 10.0 * (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
MTV_FRACTION = 0.41
MTV_ABSOLUTE_SUV = 2.5
#: Above this many multiply-adds the SUVpeak convolution goes through FFTs.
_DIRECT_LIMIT = 5e7


@dataclass(frozen=True)
class PetStats:
    """SUV metrics of one lesion (SUV in g/mL, volumes in mL)."""

    suv_max: float
    suv_mean: float
    suv_peak: float
    mtv41_ml: float
    suv_mean41: float
    tlg41: float
    mtv25_ml: float
    suv_mean25: Optional[float]
    tlg25: float


def sphere_kernel(physical: Physical, radius_mm: float = SUVPEAK_RADIUS_MM) -> np.ndarray:
    """Boolean (z, y, x) kernel, odd sizes: the voxel offsets whose centres lie within ``radius_mm``."""
    inverse = np.linalg.inv(physical.matrix)
    half = np.floor(radius_mm * np.linalg.norm(inverse, axis=1) + 1e-9).astype(int)  # (x, y, z)
    grids = np.meshgrid(*(np.arange(-h, h + 1) for h in half[::-1]), indexing="ij")  # z, y, x
    offsets_xyz = np.stack([grids[2], grids[1], grids[0]], axis=-1).astype(float)
    distance = np.linalg.norm(offsets_xyz @ physical.matrix.T, axis=-1)
    return distance <= radius_mm + 1e-9


def _correlate_sum(values: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Sum of ``values`` under the (point-symmetric) kernel centred on every voxel; zero outside."""
    if values.size * np.count_nonzero(kernel) <= _DIRECT_LIMIT:
        return ndimage.correlate(values, kernel.astype(np.float64), mode="constant", cval=0.0)
    return signal.fftconvolve(values, kernel.astype(np.float64), mode="same")


def local_means(suv_zyx: np.ndarray, lesion: Lesion, kernel: np.ndarray) -> np.ndarray:
    """Mean SUV in the kernel's sphere centred on every voxel of the lesion's box (box shape)."""
    half = np.array(kernel.shape) // 2
    lo = np.maximum(lesion.offset_zyx - half, 0)
    hi = np.minimum(lesion.offset_zyx + np.array(lesion.mask.shape) + half, suv_zyx.shape)
    crop = suv_zyx[tuple(slice(a, b) for a, b in zip(lo, hi))].astype(np.float64)
    sums = _correlate_sum(crop, kernel)
    counts = np.rint(_correlate_sum(np.ones_like(crop), kernel))
    inner = tuple(slice(int(o - a), int(o - a + n)) for o, a, n in zip(lesion.offset_zyx, lo, lesion.mask.shape))
    return sums[inner] / counts[inner]


def pet_stats(suv_zyx: np.ndarray, lesion: Lesion, physical: Physical,
              kernel: Optional[np.ndarray] = None) -> PetStats:
    """The SUV metrics of ``lesion`` on the SUV image ``suv_zyx`` (z, y, x) of the label map's grid."""
    if kernel is None:
        kernel = sphere_kernel(physical)
    values = suv_zyx[lesion.box][lesion.mask].astype(np.float64)
    suv_max = float(values.max())
    peak = float(local_means(suv_zyx, lesion, kernel)[lesion.mask].max())
    voxel_ml = physical.voxel_volume_mm3() / 1000.0
    in41 = values[values >= MTV_FRACTION * suv_max]
    in25 = values[values >= MTV_ABSOLUTE_SUV]
    mtv41, mtv25 = in41.size * voxel_ml, in25.size * voxel_ml
    mean41 = float(in41.mean())
    mean25 = float(in25.mean()) if in25.size else None
    return PetStats(
        suv_max=suv_max, suv_mean=float(values.mean()), suv_peak=peak,
        mtv41_ml=mtv41, suv_mean41=mean41, tlg41=mtv41 * mean41,
        mtv25_ml=mtv25, suv_mean25=mean25, tlg25=mtv25 * mean25 if mean25 is not None else 0.0,
    )
