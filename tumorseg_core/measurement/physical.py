"""Voxel indices to LPS millimetres for one image grid.

A voxel with ITK index ``(i, j, k)`` (x, y, z) has its centre at
``origin + direction @ (spacing * (i, j, k))``. Arrays from SimpleITK are indexed
``(z, y, x)``, so an array index ``(k, j, i)`` is reversed before the mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Physical:
    """The affine map of a grid: ``lps = origin + matrix @ index_xyz`` (matrix = direction · diag(spacing))."""

    matrix: np.ndarray  # (3, 3): column a is the LPS step (mm) of one voxel along ITK axis a (x, y, z)
    origin: np.ndarray  # (3,) LPS mm of voxel (0, 0, 0)'s centre

    @classmethod
    def of(cls, image: sitk.Image) -> "Physical":
        direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
        return cls(direction * np.array(image.GetSpacing(), dtype=float), np.array(image.GetOrigin(), dtype=float))

    def points_zyx(self, index_zyx: np.ndarray) -> np.ndarray:
        """(n, 3) LPS mm of (n, 3) array indices (z, y, x) (integers or continuous)."""
        return self.origin + np.asarray(index_zyx, dtype=float)[:, ::-1] @ self.matrix.T

    def voxel_volume_mm3(self) -> float:
        """The volume of one voxel (|det| of the matrix, i.e. the product of the spacings)."""
        return float(abs(np.linalg.det(self.matrix)))

    def half_extent_lps(self) -> np.ndarray:
        """(3,) half the LPS extent of one voxel box along L, P and S (for bounding boxes of voxel edges)."""
        return 0.5 * np.abs(self.matrix).sum(axis=1)

    def axis_step_mm(self) -> np.ndarray:
        """(3,) length (mm) of one voxel step along ITK axes x, y, z."""
        return np.linalg.norm(self.matrix, axis=0)
