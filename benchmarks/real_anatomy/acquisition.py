"""Re-acquiring a volume: another slice thickness, in-plane spacing and orientation, then bias field and noise.

Orientations (the direction matrix's columns are the LPS directions of the index axes
x, y, z): ``axial`` (identity), ``coronal`` (slices along y, rows run superior to
inferior), ``sagittal`` (slices along x) and ``oblique`` (axial tilted 10-30 degrees about
two axes, sometimes with a flipped axis). Thick slices average the anatomy over their
thickness (a box slice profile): the volume is resampled linearly onto a grid k times finer
across slices, and each k fine slices are averaged. The truth is resampled nearest-neighbour
onto exactly the thick grid, so label and image share size, spacing, origin and direction.
MRI gets a smooth multiplicative bias field (+-10-25%) and Rician noise (1-4% of the
tissue level); CT gets Gaussian noise (3-10 HU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

ORIENTATIONS: tuple[str, ...] = ("axial", "coronal", "sagittal", "oblique")
THICKNESSES_MM: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)


@dataclass(frozen=True)
class Acquisition:
    """How a case is sampled: slice thickness (= slice spacing) and in-plane spacing (mm), orientation, direction."""

    thickness_mm: float
    inplane_mm: float
    orientation: str
    direction: tuple[float, ...]  # 9 values, row-major, columns = index axes in LPS


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def direction_for(orientation: str, rng: np.random.Generator) -> np.ndarray:
    """A 3x3 orthonormal direction matrix (columns: LPS directions of index x, y, z) for ``orientation``."""
    if orientation == "axial":
        return np.eye(3)
    if orientation == "coronal":
        return np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    if orientation == "sagittal":
        return np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    tilt = _rotation(0, rng.uniform(10, 30) * rng.choice([-1, 1])) @ _rotation(1, rng.uniform(10, 30))
    flip = np.diag([1.0, -1.0, 1.0]) if rng.uniform() < 0.5 else np.eye(3)
    return tilt @ flip


def choose_acquisition(rng: np.random.Generator, modality: str) -> Acquisition:
    """A random acquisition: thickness 1-7 mm, in-plane 0.6-1.2 mm (CT) or 0.8-1.3 mm (MRI), any orientation."""
    orientation = str(rng.choice(ORIENTATIONS))
    thickness = float(rng.choice(THICKNESSES_MM))
    inplane = float(rng.uniform(0.6, 1.2) if modality == "ct" else rng.uniform(0.8, 1.3))
    inplane = min(inplane, thickness)  # slices never finer than the in-plane spacing
    direction = direction_for(orientation, rng)
    return Acquisition(thickness, round(inplane, 3), orientation, tuple(float(v) for v in direction.ravel()))


def _grid(image: sitk.Image, mask: np.ndarray, direction: np.ndarray, spacing: np.ndarray
          ) -> tuple[tuple[int, int, int], np.ndarray]:
    """Size and origin of a grid with ``direction``/``spacing`` covering ``mask``'s box (+5 mm) in ``image``."""
    zyx = np.argwhere(mask)
    lo, hi = zyx.min(axis=0), zyx.max(axis=0)
    corners = np.array([[x, y, z] for x in (lo[2], hi[2]) for y in (lo[1], hi[1]) for z in (lo[0], hi[0])], float)
    points = np.array([image.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    projected = points @ direction  # coordinates along the new axes
    low = projected.min(axis=0) - 5.0
    high = projected.max(axis=0) + 5.0
    size = np.maximum(np.ceil((high - low) / spacing).astype(int) + 1, 1)
    return (int(size[0]), int(size[1]), int(size[2])), direction @ low


def reacquire(image: sitk.Image, label: sitk.Image, body: np.ndarray, acquisition: Acquisition,
              background: float) -> tuple[sitk.Image, sitk.Image]:
    """``(image, label)`` on the acquisition's grid covering ``body`` (a (z, y, x) mask of ``image``).

    The image is averaged over each slice's thickness; the label is nearest-neighbour on the same grid.
    """
    direction = np.asarray(acquisition.direction, float).reshape(3, 3)
    thick = acquisition.thickness_mm
    k = max(1, int(round(thick / 1.0)))
    spacing = np.array([acquisition.inplane_mm, acquisition.inplane_mm, thick])
    size, origin = _grid(image, body, direction, spacing)
    fine = sitk.Image(size[0], size[1], size[2] * k, sitk.sitkFloat32)
    fine.SetSpacing((spacing[0], spacing[1], thick / k))
    fine.SetDirection(tuple(direction.ravel()))
    fine_origin = origin - direction[:, 2] * thick * (k - 1) / (2.0 * k)  # fine slices centred on each thick one
    fine.SetOrigin(tuple(fine_origin))
    fine_image = sitk.Resample(image, fine, sitk.Transform(), sitk.sitkLinear, background, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(fine_image).reshape(size[2], k, size[1], size[0]).mean(axis=1)
    out = sitk.GetImageFromArray(array.astype(np.float32))
    out.SetSpacing(tuple(float(v) for v in spacing))
    out.SetDirection(tuple(direction.ravel()))
    out.SetOrigin(tuple(float(v) for v in origin))
    out_label = sitk.Resample(label, out, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return out, out_label


def add_bias_and_noise(image: sitk.Image, modality: str, level: float, rng: np.random.Generator) -> sitk.Image:
    """The image with MRI bias field and Rician noise, or CT Gaussian noise; ``level`` is the tissue intensity."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if modality == "mri":
        idx = np.indices(array.shape, dtype=np.float32)
        size = np.asarray(array.shape, np.float32).reshape(3, 1, 1, 1)
        u = (idx / np.maximum(size - 1, 1) - 0.5) * 2.0  # -1..1 along z, y, x
        coeffs = rng.normal(0.0, 1.0, 9)
        field = (coeffs[0] * u[0] + coeffs[1] * u[1] + coeffs[2] * u[2] + coeffs[3] * u[0] * u[1]
                 + coeffs[4] * u[1] * u[2] + coeffs[5] * u[0] * u[2] + coeffs[6] * u[0] ** 2
                 + coeffs[7] * u[1] ** 2 + coeffs[8] * u[2] ** 2)
        field *= rng.uniform(0.1, 0.25) / max(float(np.abs(field).max()), 1e-6)
        array = array * np.exp(field)
        sigma = level * rng.uniform(0.01, 0.04)
        array = np.sqrt((array + rng.normal(0, sigma, array.shape)) ** 2 + rng.normal(0, sigma, array.shape) ** 2)
        array *= rng.uniform(0.5, 4.0)  # scanner scale: models must normalize
    else:
        array = array + rng.normal(0.0, rng.uniform(3.0, 10.0), array.shape)
    out = sitk.GetImageFromArray(array.astype(np.float32))
    out.CopyInformation(image)
    return out
