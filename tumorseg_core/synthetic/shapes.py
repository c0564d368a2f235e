"""Geometry of the synthetic scene, defined in physical LPS millimetres.

Every shape is evaluated at the physical centres of the voxels of an image grid, so the
same scene can be sampled through any spacing or (oblique) direction and the lesion
centres reported in mm map to the right voxels. Shapes return a signed distance ``d``
(mm, negative inside) and the voxel's width ``w`` (mm) along the shape normal; the
occupancy ``clip(0.5 - d / w, 0, 1)`` is the box-filter partial-volume fraction of a
voxel cut by a locally planar boundary, which is cheap and exact enough for phantoms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

Region = tuple[slice, slice, slice]  # (z, y, x) slices into the grid array


@dataclass(frozen=True)
class Grid:
    """An image grid: size/spacing in (x, y, z), origin in LPS mm, direction columns = grid axes."""

    size_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray  # (3, 3); column k is the LPS unit vector of grid axis k

    @classmethod
    def from_image(cls, image: sitk.Image) -> Grid:
        """The grid of a 3D SimpleITK image."""
        d = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()), d)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """numpy array shape (z, y, x)."""
        return tuple(int(n) for n in self.size_xyz[::-1])

    @property
    def center(self) -> np.ndarray:
        """Physical LPS position of the grid's centre (mm)."""
        half = (np.asarray(self.size_xyz) - 1) * np.asarray(self.spacing_xyz) / 2.0
        return np.asarray(self.origin) + self.direction @ half

    @property
    def half_extent(self) -> np.ndarray:
        """Half the grid's box size along each grid axis (x, y, z), mm."""
        return np.asarray(self.size_xyz) * np.asarray(self.spacing_xyz) / 2.0

    def to_image(self, array: np.ndarray) -> sitk.Image:
        """Wrap a (z, y, x) array as a SimpleITK image on this grid."""
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(tuple(float(s) for s in self.spacing_xyz))
        img.SetOrigin(tuple(float(o) for o in self.origin))
        img.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return img

    def region_for_box(self, lo: np.ndarray, hi: np.ndarray) -> Optional[Region]:
        """Index slices (z, y, x) covering the physical axis-aligned box [lo, hi], or None if outside."""
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        # Continuous index of each corner: D^T (p - origin) / spacing (D is orthonormal).
        idx = (corners - np.asarray(self.origin)) @ self.direction / np.asarray(self.spacing_xyz)
        first = np.maximum(np.floor(idx.min(axis=0)).astype(int) - 1, 0)
        last = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 2, np.asarray(self.size_xyz))
        if np.any(last <= first):
            return None
        return (slice(first[2], last[2]), slice(first[1], last[1]), slice(first[0], last[0]))

    def region_for_ball(self, center: np.ndarray, radius: float) -> Optional[Region]:
        """Index slices covering a ball of ``radius`` mm around ``center``."""
        c = np.asarray(center, dtype=np.float64)
        return self.region_for_box(c - radius, c + radius)

    def full_region(self) -> Region:
        """Slices covering the whole grid."""
        return tuple(slice(0, n) for n in self.shape_zyx)

    def points(self, region: Region) -> np.ndarray:
        """Physical LPS coordinates of voxel centres in ``region``: array (3, z, y, x) float32."""
        iz = np.arange(region[0].start, region[0].stop, dtype=np.float64)
        iy = np.arange(region[1].start, region[1].stop, dtype=np.float64)
        ix = np.arange(region[2].start, region[2].stop, dtype=np.float64)
        s, d, o = self.spacing_xyz, self.direction, self.origin
        out = np.empty((3, iz.size, iy.size, ix.size), dtype=np.float32)
        for j in range(3):  # separable: p_j = o_j + sum_k D[j,k] s_k i_k
            out[j] = (o[j] + (d[j, 2] * s[2] * iz)[:, None, None] + (d[j, 1] * s[1] * iy)[None, :, None]
                      + (d[j, 0] * s[0] * ix)[None, None, :])
        return out

    def normal_width(self, normal: np.ndarray) -> np.ndarray:
        """Width (mm) of a voxel box projected on unit vectors ``normal`` (3, ...)."""
        w = np.zeros(normal.shape[1:], dtype=np.float32)
        for k in range(3):
            dk = self.direction[:, k]
            w += np.abs(dk[0] * normal[0] + dk[1] * normal[1] + dk[2] * normal[2]) * self.spacing_xyz[k]
        return np.maximum(w, 1e-3)


def occupancy(d: np.ndarray, w: np.ndarray, partial_volume: bool) -> np.ndarray:
    """Fraction of each voxel inside a shape from signed distance ``d`` and width ``w`` (mm)."""
    if not partial_volume:
        return (d <= 0).astype(np.float32)
    return np.clip(0.5 - d / w, 0.0, 1.0).astype(np.float32)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@dataclass
class RadialShape:
    """A star-shaped blob: an ellipsoid whose normalized radius is modulated by smooth waves.

    In normalized coordinates ``q = R^T (p - c) / a`` the boundary is at
    ``|q| = 1 + sum_i amp_i cos(omega_i . u + phase_i)`` with ``u = q / |q|``: a cheap
    stand-in for a low-order spherical-harmonic deformation (lobulation).
    """

    center: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    omegas: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    amps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    phases: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def random(cls, rng: np.random.Generator, center: np.ndarray, semi_axes: Sequence[float],
               roughness: float, n_waves: int = 4, freq: tuple[float, float] = (1.5, 4.0),
               rotate: bool = True) -> RadialShape:
        """Random deformation with total relative amplitude about ``roughness``."""
        dirs = rng.normal(size=(n_waves, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        omegas = dirs * rng.uniform(*freq, size=(n_waves, 1))
        amps = rng.uniform(0.3, 1.0, size=n_waves)
        amps *= roughness / max(amps.sum(), 1e-9)
        rot = random_rotation(rng) if rotate else np.eye(3)
        return cls(np.asarray(center, float), np.asarray(semi_axes, float), rot, omegas, amps,
                   rng.uniform(0, 2 * np.pi, size=n_waves))

    def scaled(self, factor: float) -> RadialShape:
        """The same shape shrunk/grown about its centre."""
        return RadialShape(self.center, self.semi_axes * factor, self.rotation, self.omegas, self.amps, self.phases)

    @property
    def bound_radius(self) -> float:
        """Radius (mm) of a ball around the centre containing the whole shape."""
        return float(self.semi_axes.max() * (1.0 + np.abs(self.amps).sum()) + 1e-6)

    def normalized_radius(self, points: np.ndarray) -> np.ndarray:
        """``|q| / boundary``: 0 at the centre, 1 on the boundary; ``points`` is (3, ...) mm."""
        v = points - self.center.reshape(3, *([1] * (points.ndim - 1))).astype(np.float32)
        q = np.tensordot(self.rotation.T.astype(np.float32), v, axes=1)
        q /= self.semi_axes.reshape(3, *([1] * (q.ndim - 1))).astype(np.float32)
        rho = np.sqrt((q * q).sum(axis=0))
        u = q / np.maximum(rho, 1e-6)
        boundary = np.ones_like(rho)
        for om, amp, ph in zip(self.omegas, self.amps, self.phases):
            boundary += amp * np.cos(om[0] * u[0] + om[1] * u[1] + om[2] * u[2] + ph)
        return rho / boundary

    def evaluate(self, points: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Signed distance (mm), voxel width along the normal (mm) and normalized radius."""
        v = points - self.center.reshape(3, 1, 1, 1).astype(np.float32)
        dist = np.sqrt((v * v).sum(axis=0))
        nr = self.normalized_radius(points)
        # Radial distance to the boundary along the ray from the centre.
        d = np.where(nr > 1e-6, dist * (1.0 - 1.0 / np.maximum(nr, 1e-6)), -float(self.semi_axes.min()))
        w = grid.normal_width(v / np.maximum(dist, 1e-6))
        return d.astype(np.float32), w, nr


@dataclass
class Lesion3D:
    """A lesion: a lobulated main blob plus optional satellite spheres (multi-blob lesions)."""

    main: RadialShape
    satellites: list[RadialShape]
    radius_mm: float

    @property
    def bound_radius(self) -> float:
        """Radius (mm) of a ball around the main centre holding the lesion."""
        r = self.main.bound_radius
        for s in self.satellites:
            r = max(r, float(np.linalg.norm(s.center - self.main.center)) + s.bound_radius)
        return r

    def evaluate(self, points: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Union of the parts: min signed distance, its width, min normalized radius."""
        d, w, nr = self.main.evaluate(points, grid)
        for s in self.satellites:
            ds, ws, nrs = s.evaluate(points, grid)
            closer = ds < d
            d = np.where(closer, ds, d)
            w = np.where(closer, ws, w)
            nr = np.minimum(nr, nrs)
        return d, w, nr


@dataclass
class Tube:
    """A vessel-like tube of constant radius along a polyline (LPS mm)."""

    nodes: np.ndarray  # (m, 3)
    radius: float

    def segments(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Consecutive node pairs."""
        return [(self.nodes[i], self.nodes[i + 1]) for i in range(len(self.nodes) - 1)]

    def evaluate_segment(self, a: np.ndarray, b: np.ndarray, points: np.ndarray,
                         grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """Signed distance (mm) to one capsule and the voxel width along its normal."""
        ab = (b - a).astype(np.float32)
        v = points - a.reshape(3, 1, 1, 1).astype(np.float32)
        t = np.clip(np.tensordot(ab, v, axes=1) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
        rel = v - ab.reshape(3, 1, 1, 1) * t
        dist = np.sqrt((rel * rel).sum(axis=0))
        w = grid.normal_width(rel / np.maximum(dist, 1e-6))
        return (dist - self.radius).astype(np.float32), w
