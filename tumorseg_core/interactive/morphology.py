"""Binary morphology helpers in millimetres for :mod:`tumorseg_core.interactive.seeds`.

All operations work on the bounding box of the mask (lesions are small compared with the
crop around a seed) and use Euclidean distance transforms with the voxel spacing, so
radii are physical on anisotropic grids. numpy and scipy only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def bbox(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    """Slices of ``mask``'s bounding box grown by ``pad`` voxels (clipped to the array)."""
    hits = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax))) for ax in range(mask.ndim)]
    return tuple(slice(max(int(i[0]) - pad, 0), min(int(i[-1]) + pad + 1, n)) for i, n in zip(hits, mask.shape))


def dilate_mm(mask: np.ndarray, radius: float, spacing: np.ndarray) -> np.ndarray:
    """Dilation by a ball of ``radius`` mm."""
    out = np.zeros_like(mask)
    if not mask.any():
        return out
    box = bbox(mask, int(np.ceil(radius / float(np.min(spacing)))) + 1)
    out[box] = ndimage.distance_transform_edt(~mask[box], sampling=spacing) <= radius
    return out


def erode_mm(mask: np.ndarray, radius: float, spacing: np.ndarray) -> np.ndarray:
    """Erosion by a ball of ``radius`` mm (voxels farther than ``radius`` from the outside)."""
    out = np.zeros_like(mask)
    if not mask.any():
        return out
    box = bbox(mask, 1)
    out[box] = ndimage.distance_transform_edt(mask[box], sampling=spacing) > radius
    return out


def open_mm(mask: np.ndarray, radius: float, spacing: np.ndarray) -> np.ndarray:
    """Opening by a ball of ``radius`` mm: cuts bridges thinner than ``2 * radius``."""
    if not mask.any():
        return mask
    return dilate_mm(erode_mm(mask, radius, spacing), radius, spacing) & mask


def close_mm(mask: np.ndarray, radius: float, spacing: np.ndarray) -> np.ndarray:
    """Closing by a ball of ``radius`` mm: bridges gaps narrower than ``2 * radius``."""
    if not mask.any():
        return mask
    pad = int(np.ceil(radius / float(np.min(spacing)))) + 2
    box = bbox(mask, pad)
    sub = mask[box]
    grown = ndimage.distance_transform_edt(~sub, sampling=spacing) <= radius
    closed = ~(ndimage.distance_transform_edt(grown, sampling=spacing) <= radius) | sub
    out = mask.copy()
    out[box] = closed
    return out


def component(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Union of the 6-connected components of ``mask`` that touch ``seed`` voxels."""
    if not (mask & seed).any():
        return np.zeros_like(mask)
    box = bbox(mask, 0)
    lab, _ = ndimage.label(mask[box])
    keep = np.unique(lab[seed[box] & mask[box]])
    out = np.zeros_like(mask)
    out[box] = np.isin(lab, keep[keep > 0])
    return out


def fill_holes(mask: np.ndarray, slicewise: bool = True) -> np.ndarray:
    """3D hole filling, then 2D filling in the planes of each axis.

    A necrotic core inside a rim is lesion; on thick slices a rim's caps are barely
    sampled, so the core is open in 3D but still enclosed in most 2D planes.
    """
    if not mask.any():
        return mask
    box = bbox(mask, 1)
    sub = ndimage.binary_fill_holes(mask[box])
    if slicewise:
        for axis in range(3):
            struct = np.zeros((3, 3, 3), dtype=bool)
            plane = [slice(None)] * 3
            plane[axis] = 1
            struct[tuple(plane)] = ndimage.generate_binary_structure(2, 1)
            sub |= ndimage.binary_fill_holes(sub, structure=struct)
    out = mask.copy()
    out[box] = sub
    return out
