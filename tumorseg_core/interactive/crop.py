"""A near-isotropic working grid around a user's interactions, and the way back to the image.

An interactive session works on a crop of the image, resampled to isotropic voxels of at
least 1 mm (coarser for big crops, so it holds at most :data:`MAX_VOXELS`), with the
image's own direction. The crop is axis-aligned in the image's index space, so it maps
back onto a slab of the image's exact grid. Points are LPS mm; crop arrays are (z, y, x).
numpy and SimpleITK only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import InputError

MAX_VOXELS = 56 ** 3  # the working grid's size limit (the solver's time grows with it)
MIN_VOXEL_MM = 1.0


@dataclass
class Crop:
    """The working grid: ``array`` (z, y, x) float32 on ``grid``; image voxels ``lo``..``hi`` (x, y, z)."""

    grid: sitk.Image
    array: np.ndarray
    lo: np.ndarray  # first image index (x, y, z) covered
    hi: np.ndarray  # last image index + 1 (x, y, z)

    @property
    def voxel_mm(self) -> float:
        return float(self.grid.GetSpacing()[0])

    def index_of(self, point_lps: Sequence[float]) -> np.ndarray:
        """Continuous (z, y, x) index of an LPS point on the working grid (may lie outside)."""
        return np.asarray(self.grid.TransformPhysicalPointToContinuousIndex(
            tuple(float(v) for v in point_lps)))[::-1]

    def contains(self, point_lps: Sequence[float], margin_mm: float = 0.0) -> bool:
        """Whether the point lies inside the crop, at least ``margin_mm`` from its faces."""
        idx = self.index_of(point_lps)
        m = margin_mm / self.voxel_mm
        return bool(np.all(idx >= m - 0.5) and np.all(idx <= np.asarray(self.array.shape) - 0.5 - m))

    def ball(self, points_lps: Sequence[Sequence[float]], radius_mm: float) -> np.ndarray:
        """Boolean (z, y, x) union of balls of ``radius_mm`` around LPS points (at least their voxel)."""
        shape = np.asarray(self.array.shape)
        out = np.zeros(self.array.shape, dtype=bool)
        r = max(radius_mm / self.voxel_mm, 0.5)
        for p in points_lps:
            c = self.index_of(p)
            lo = np.maximum(np.floor(c - r).astype(int), 0)
            hi = np.minimum(np.ceil(c + r).astype(int) + 1, shape)
            if np.any(hi <= lo):
                continue
            zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            d2 = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2
            sub = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            sub |= d2 <= r * r
            near = np.clip(np.round(c).astype(int), lo, hi - 1)
            if np.all(np.abs(near - c) <= 0.5 + 1e-6):
                out[tuple(near)] = True
        return out

    def _slab(self, image: sitk.Image) -> sitk.Image:
        return image[int(self.lo[0]):int(self.hi[0]), int(self.lo[1]):int(self.hi[1]), int(self.lo[2]):int(self.hi[2])]

    def to_image(self, values: np.ndarray, image: sitk.Image, threshold: float = 0.5) -> sitk.Image:
        """uint8 0/1 on ``image``'s exact grid: ``values`` (z, y, x, on the crop) above ``threshold``
        after linear interpolation; zero outside the crop."""
        v = sitk.GetImageFromArray(values.astype(np.float32))
        v.CopyInformation(self.grid)
        slab = sitk.Resample(v, self._slab(image), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        out = np.zeros(image.GetSize()[::-1], dtype=np.uint8)
        out[int(self.lo[2]):int(self.hi[2]), int(self.lo[1]):int(self.hi[1]), int(self.lo[0]):int(self.hi[0])] = (
            sitk.GetArrayViewFromImage(slab) > threshold)
        result = sitk.GetImageFromArray(out)
        result.CopyInformation(image)
        return result

    def from_image(self, mask: sitk.Image) -> np.ndarray:
        """A label map on the image's grid sampled onto the crop (nearest neighbour): bool (z, y, x)."""
        out = sitk.Resample(mask, self.grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        return sitk.GetArrayFromImage(out) > 0


def make_crop(image: sitk.Image, points_lps: Sequence[Sequence[float]], margin_mm: float) -> Crop:
    """The working grid covering ``points_lps`` plus ``margin_mm`` on every side (clipped to the image)."""
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    size = np.asarray(image.GetSize())
    idx = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in p)) for p in points_lps])
    lo = np.clip(np.floor(idx.min(axis=0) - margin_mm / spacing), 0, size - 1).astype(int)
    hi = np.clip(np.ceil(idx.max(axis=0) + margin_mm / spacing) + 1, lo + 1, size).astype(int)
    extent = (hi - lo) * spacing  # mm, voxel faces to voxel faces
    voxel = max(MIN_VOXEL_MM, float(np.prod(extent) / MAX_VOXELS) ** (1.0 / 3.0))
    n = np.maximum(np.round(extent / voxel).astype(int), 1)
    voxel_xyz = extent / n  # nearly isotropic; fits the slab exactly
    voxel = float(np.max(voxel_xyz))
    n = np.maximum(np.ceil(extent / voxel - 1e-6).astype(int), 1)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    corner = np.asarray(image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) - 0.5 for v in lo)))
    origin = corner + direction @ (np.full(3, 0.5 * voxel))
    resampled, array = resample_isotropic(image, origin, n, voxel)
    return Crop(resampled, array, lo, hi)


def resample_isotropic(image: sitk.Image, origin_lps: Sequence[float], size_xyz: Sequence[int],
                       voxel_mm: float) -> tuple[sitk.Image, np.ndarray]:
    """``image`` resampled (linear; beyond it, its nearest voxel) on the grid of ``size_xyz`` voxels of
    ``voxel_mm`` from ``origin_lps`` in the image's direction: (that image, its (z, y, x) float32 array)."""
    grid = sitk.Image([int(v) for v in size_xyz], sitk.sitkFloat32)
    grid.SetSpacing((float(voxel_mm),) * 3)
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(tuple(float(v) for v in origin_lps))
    resampled = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32,
                              useNearestNeighborExtrapolator=True)
    array = sitk.GetArrayFromImage(resampled)
    if not np.all(np.isfinite(array)):
        raise InputError("the image has NaN or infinite values near the clicks; fix or resample the image")
    return resampled, array
