"""An overlay PNG: three orthogonal slices through a point, image in grey, truth and result in color."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

RESULT_RGB = np.array([230, 60, 40], dtype=np.float32)
TRUTH_RGB = np.array([60, 220, 90], dtype=np.uint8)


def _grey(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, [1, 99]) if values.size else (0.0, 1.0)
    scaled = np.clip((values - lo) / max(hi - lo, 1e-6), 0, 1)
    return (scaled * 255).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _panel(image: np.ndarray, result: np.ndarray, truth: Optional[np.ndarray],
           pixel_mm: Sequence[float]) -> np.ndarray:
    """One RGB panel (rows, cols, 3) with square pixels of the finest in-plane spacing."""
    scale = [p / min(pixel_mm) for p in pixel_mm]
    grey = ndimage.zoom(image.astype(np.float32), scale, order=1)
    result_up = ndimage.zoom(result.astype(np.uint8), scale, order=0) > 0
    rgb = np.repeat(_grey(grey)[..., None], 3, axis=2).astype(np.float32)
    rgb[result_up] = 0.55 * rgb[result_up] + 0.45 * RESULT_RGB
    rgb = rgb.astype(np.uint8)
    if truth is not None:
        truth_up = ndimage.zoom(truth.astype(np.uint8), scale, order=0) > 0
        rgb[_outline(truth_up)] = TRUTH_RGB
    return rgb[::-1]  # rows from top (superior / anterior) to bottom, as radiologists look at them


def write_overlay_png(image: sitk.Image, result: sitk.Image, path: str, truth: Optional[sitk.Image] = None,
                      center_index: Optional[Sequence[int]] = None) -> str:
    """Write axial, coronal and sagittal slices through ``center_index`` (x, y, z) side by side.

    Default centre: the result's foreground centroid, else the truth's, else the volume centre.
    Result voxels are tinted red; the truth is outlined in green.
    """
    volume = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x)
    labels = sitk.GetArrayFromImage(result) > 0
    truth_array = sitk.GetArrayFromImage(truth) > 0 if truth is not None else None
    if center_index is None:
        for mask in (labels, truth_array):
            if mask is not None and mask.any():
                z, y, x = (int(round(c)) for c in ndimage.center_of_mass(mask))
                break
        else:
            z, y, x = (n // 2 for n in volume.shape)
    else:
        x, y, z = (int(c) for c in center_index)
    sx, sy, sz = image.GetSpacing()

    def cut(array: Optional[np.ndarray], axis: int, at: int) -> Optional[np.ndarray]:
        return None if array is None else np.take(array, at, axis=axis)

    panels = [
        _panel(cut(volume, 0, z), cut(labels, 0, z), cut(truth_array, 0, z), (sy, sx)),
        _panel(cut(volume, 1, y), cut(labels, 1, y), cut(truth_array, 1, y), (sz, sx)),
        _panel(cut(volume, 2, x), cut(labels, 2, x), cut(truth_array, 2, x), (sz, sy)),
    ]
    height = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0))) for p in panels]
    canvas = np.concatenate(padded, axis=1)
    # Phantoms are ~100 voxels across: enlarge so the PNG is readable at a glance.
    magnify = int(np.clip(900 // max(canvas.shape[1], 1), 1, 4))
    canvas = np.repeat(np.repeat(canvas, magnify, axis=0), magnify, axis=1)
    sitk.WriteImage(sitk.GetImageFromArray(canvas, isVector=True), path)
    return path
