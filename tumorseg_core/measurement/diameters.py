"""Lesion diameters: RECIST 1.1 long and short axis on one slice, and the 3D maximum diameter.

Diameters are measured between **voxel corners**, like calipers set on the outer edges of
the voxels on the screen: a row of N voxels measures N × spacing and a single voxel its
own diagonal. The long axis and the 3D diameter are exact: the largest distance between
two corners of the lesion's voxels (its convex hull is the hull of the voxel centres
grown by one voxel box, so only the hull's vertices are compared). Against a smooth shape
they read high by less than one voxel diagonal. Everything is in millimetres in physical
space, so anisotropic spacing and oblique directions are handled exactly.

"Axial" means the slice plane of the image grid: the plane of the ITK x and y axes at one
z index (for an oblique acquisition that is the acquired, tilted plane; for a sagittal
series it is the sagittal plane). The RECIST long axis is the longest in-plane diameter on
the slice where it is longest (ties: the slice with the longer short axis); the short axis
is the longest extent, corner to corner, perpendicular to it on the same slice, measured
in strips one pixel (the finer in-plane spacing) wide across the long axis. Since every
in-plane diameter is also a 3D one, ``long <= 3D maximum`` always holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from tumorseg_core.measurement.physical import Physical

_CHUNK = 512


@dataclass(frozen=True)
class Recist:
    """RECIST 1.1 diameters of one lesion; endpoints as continuous array indices (z, y, x)."""

    slice_index: int  # the z index of the measured slice
    long_mm: float
    short_mm: float
    long_ends_zyx: np.ndarray  # (2, 3)
    short_ends_zyx: np.ndarray  # (2, 3)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the only possible convex hull vertices)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hull_vertices(points: np.ndarray) -> np.ndarray:
    """Indices of the vertices of the convex hull of ``points`` (n, d), in the points' own affine span
    (so flat or collinear sets work too); every point when Qhull cannot tell."""
    n = len(points)
    if n < 2:
        return np.arange(n)
    centred = points - points.mean(axis=0)
    _u, sv, vt = np.linalg.svd(centred, full_matrices=False)
    rank = int(np.sum(sv > 1e-9 * max(sv[0], 1e-300)))
    coords = centred @ vt[:rank].T
    if rank == 0:
        return np.array([0])
    if rank == 1:
        return np.array([int(np.argmin(coords[:, 0])), int(np.argmax(coords[:, 0]))])
    if n <= rank + 1:
        return np.arange(n)
    try:
        return np.asarray(ConvexHull(coords).vertices)
    except QhullError:
        return np.arange(n)


def farthest_pair(points: np.ndarray) -> tuple[float, int, int]:
    """The largest distance between two of ``points`` (n, d) and the indices of that pair (exact)."""
    if len(points) < 2:
        return 0.0, 0, 0
    candidates = hull_vertices(points)
    best, best_i, best_j = -1.0, 0, 0
    cand = points[candidates]
    for start in range(0, len(cand), _CHUNK):
        block = cand[start:start + _CHUNK]
        d2 = ((block[:, None, :] - cand[None, :, :]) ** 2).sum(axis=-1)
        a, b = divmod(int(np.argmax(d2)), len(cand))
        if d2[a, b] > best:
            best, best_i, best_j = float(d2[a, b]), int(candidates[start + a]), int(candidates[b])
    return float(np.sqrt(best)), best_i, best_j


def _corner_offsets(steps: np.ndarray) -> np.ndarray:
    """(2^d, d) offsets from a voxel's centre to its corners; ``steps`` (d, d) has one voxel edge per column."""
    d = steps.shape[1]
    signs = np.array(np.meshgrid(*([(-0.5, 0.5)] * d), indexing="ij")).reshape(d, -1).T
    return signs @ steps.T


def farthest_corners(centres: np.ndarray, steps: np.ndarray) -> tuple[float, np.ndarray]:
    """The largest distance between two corners of the voxels centred at ``centres`` (n, d), and those corners (2, d).

    The hull of the corners is the hull of the centres grown by one voxel box, so its
    vertices are hull vertices of the centres plus corner offsets: only those are compared.
    """
    corners = (centres[hull_vertices(centres)][:, None, :] + _corner_offsets(steps)[None]).reshape(-1, steps.shape[0])
    distance, i, j = farthest_pair(corners)
    return distance, corners[[i, j]]


def _voxel_width(unit: np.ndarray, steps: np.ndarray) -> float:
    """Width of one voxel along the unit vector ``unit`` (d,): the sum of |unit · edge| over its edges (columns)."""
    return float(np.abs(unit @ steps).sum())


def max_diameter_3d(mask: np.ndarray, physical: Physical) -> tuple[float, np.ndarray]:
    """The 3D maximum diameter (mm) of ``mask`` (z, y, x), corner to corner, and its ends (2, 3).

    The ends are continuous array indices (z, y, x) into ``mask`` (a caller measuring a box
    adds its offset).
    """
    points = physical.points_zyx(np.argwhere(_surface(mask)))
    length, ends = farthest_corners(points, physical.matrix)
    ends_xyz = np.linalg.solve(physical.matrix, (ends - physical.origin).T).T
    return length, ends_xyz[:, ::-1]


def _plane_frame(physical: Physical) -> np.ndarray:
    """(2, 2) R with in-plane mm coordinates = R @ (i, j) in an orthonormal frame of the slice plane."""
    _q, r = np.linalg.qr(physical.matrix[:, :2])
    return r


def recist(mask: np.ndarray, physical: Physical) -> Recist:
    """RECIST 1.1 long and short axis of a non-empty ``mask`` (z, y, x) on its slice with the longest diameter.

    Endpoints and ``slice_index`` are indices into ``mask`` (a caller measuring a box adds its offset).
    """
    frame = _plane_frame(physical)  # columns: one pixel step along i and along j, in in-plane mm
    best: tuple[float, float, int, np.ndarray, np.ndarray] | None = None
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        plane = mask[z]
        edge = plane & ~ndimage.binary_erosion(plane, border_value=0)
        ji = np.argwhere(edge)
        coords = ji[:, ::-1] @ frame.T
        long_mm, (end_a, end_b) = farthest_corners(coords, frame)
        if best is not None and long_mm < best[0] - 1e-9:
            continue
        short_mm, short_ends = _short_axis(plane, frame, end_b - end_a)
        if best is None or long_mm > best[0] + 1e-9 or short_mm > best[1] + 1e-9:
            best = (long_mm, short_mm, int(z), np.stack([end_a, end_b]), short_ends)
    assert best is not None, "recist() needs a non-empty mask"
    long_mm, short_mm, z, long_ends, short_ends = best
    return Recist(z, long_mm, short_mm, _plane_to_zyx(long_ends, frame, z), _plane_to_zyx(short_ends, frame, z))


def _plane_to_zyx(ends_mm: np.ndarray, frame: np.ndarray, z: int) -> np.ndarray:
    """(2, 2) in-plane mm points to (2, 3) continuous array indices (z, y, x) on slice ``z``."""
    ij = np.linalg.solve(frame, ends_mm.T).T
    return np.column_stack([np.full(len(ij), float(z)), ij[:, 1], ij[:, 0]])


def _short_axis(plane: np.ndarray, frame: np.ndarray, long_vector: np.ndarray) -> tuple[float, np.ndarray]:
    """The longest extent (edge to edge) of ``plane`` (y, x) perpendicular to ``long_vector`` and its ends (2, 2) mm."""
    ji = np.argwhere(plane)
    coords = ji[:, ::-1] @ frame.T
    u = long_vector / np.linalg.norm(long_vector)
    v = np.array([-u[1], u[0]])
    t, s = coords @ u, coords @ v
    width = float(min(np.linalg.norm(frame, axis=0)))  # one pixel (the finer in-plane spacing)
    strip = np.floor((t - t.min()) / width).astype(np.int64)
    order = np.argsort(strip, kind="stable")
    strip, t, s = strip[order], t[order], s[order]
    starts = np.flatnonzero(np.r_[True, strip[1:] != strip[:-1]])
    s_max = np.maximum.reduceat(s, starts)
    s_min = np.minimum.reduceat(s, starts)
    k = int(np.argmax(s_max - s_min))
    stop = starts[k + 1] if k + 1 < len(starts) else len(t)
    t_mid = float(t[starts[k]:stop].mean())
    half = 0.5 * _voxel_width(v, frame)
    ends = np.array([t_mid * u + (s_min[k] - half) * v, t_mid * u + (s_max[k] + half) * v])
    return float(s_max[k] - s_min[k] + 2 * half), ends
