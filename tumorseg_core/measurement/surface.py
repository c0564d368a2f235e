"""Surface area (marching cubes on the voxel mask, at the true spacing) and sphericity.

Sphericity uses the volume the same mesh encloses (as IBSI defines it), so it never
exceeds 1 (the isoperimetric inequality holds for any closed surface); the reported lesion
volume stays the voxel count × voxel volume. A voxel mask's staircase makes a voxelised
sphere read about 0.9.
"""

from __future__ import annotations

import math

import numpy as np

from tumorseg_core.measurement.physical import Physical


def surface_mesh(mask: np.ndarray, physical: Physical) -> tuple[float, float]:
    """(area mm², enclosed volume mm³) of the marching-cubes surface of ``mask`` (z, y, x) at level 0.5.

    The mask is padded with one voxel of background so a lesion touching the box is closed.
    The mesh is built with the voxel spacing of each axis; a rotation (oblique direction)
    changes neither area nor volume, so the direction is not needed.
    """
    from skimage.measure import marching_cubes, mesh_surface_area

    padded = np.pad(mask.astype(np.float32), 1)
    spacing_zyx = tuple(float(v) for v in physical.axis_step_mm()[::-1])
    verts, faces, _normals, _values = marching_cubes(padded, level=0.5, spacing=spacing_zyx)
    triangles = verts[faces]  # (n, 3 vertices, 3)
    volume = abs(float(np.einsum("ij,ij->i", triangles[:, 0], np.cross(triangles[:, 1], triangles[:, 2])).sum())) / 6
    return float(mesh_surface_area(verts, faces)), volume


def sphericity(volume_mm3: float, area_mm2: float) -> float:
    """π^(1/3) (6V)^(2/3) / A: 1 for a sphere, smaller for any other shape (NaN when A is 0)."""
    if area_mm2 <= 0:
        return float("nan")
    return math.pi ** (1 / 3) * (6 * volume_mm3) ** (2 / 3) / area_mm2
