"""Refine a model's result with clicks: keep the lesions pointed at, drop those marked background.

This is the "Refine" mode of the Segment Editor effect and ``tumorseg segment --seed``
with a model. Points are LPS millimetres (ITK's physical space).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from tumorseg_core.errors import InputError

logger = logging.getLogger(__name__)

# A click a few millimetres beside a small lesion still means that lesion.
SNAP_DISTANCE_MM = 10.0


def point_to_index(image: sitk.Image, point_lps: Sequence[float]) -> tuple[int, int, int]:
    """Index (x, y, z) of the voxel containing ``point_lps``; InputError if outside the image."""
    if len(point_lps) != 3:
        raise InputError(f"a seed point needs 3 coordinates (x,y,z in LPS mm), got {list(point_lps)}")
    continuous = image.TransformPhysicalPointToContinuousIndex([float(c) for c in point_lps])
    index = tuple(int(round(c)) for c in continuous)
    if any(i < 0 or i >= n for i, n in zip(index, image.GetSize())):
        raise InputError(
            f"seed point {tuple(round(float(c), 1) for c in point_lps)} mm (LPS) lies outside the image; "
            "click inside the volume (use LPS coordinates: RAS with x and y negated)"
        )
    return index  # type: ignore[return-value]


def _component_near(components: np.ndarray, index_xyz: tuple, spacing_xyz: Sequence[float]) -> int:
    """Component id at ``index_xyz`` or, failing that, the nearest one within SNAP_DISTANCE_MM (0 if none)."""
    z, y, x = index_xyz[2], index_xyz[1], index_xyz[0]
    hit = int(components[z, y, x])
    if hit:
        return hit
    radius = [int(np.ceil(SNAP_DISTANCE_MM / s)) for s in spacing_xyz[::-1]]
    lo = [max(0, c - r) for c, r in zip((z, y, x), radius)]
    hi = [min(n, c + r + 1) for c, r, n in zip((z, y, x), radius, components.shape)]
    window = components[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if not window.any():
        return 0
    coords = np.argwhere(window > 0) + np.array(lo)
    distances = np.sqrt((((coords - np.array([z, y, x])) * np.array(spacing_xyz[::-1])) ** 2).sum(axis=1))
    best = int(np.argmin(distances))
    if distances[best] > SNAP_DISTANCE_MM:
        return 0
    return int(components[tuple(coords[best])])


def keep_clicked_lesions(
    labels: sitk.Image,
    seeds_lps: Sequence[Sequence[float]] = (),
    background_lps: Sequence[Sequence[float]] = (),
) -> sitk.Image:
    """Restrict a label map to the connected lesions the seeds touch and remove background-marked ones.

    Connectivity is computed on the foreground (any label > 0) so a multi-label tumor
    (core + edema) is kept or removed as one lesion. With no seeds, everything not
    marked as background is kept. Returns a new image on the same grid.
    """
    array = sitk.GetArrayFromImage(labels)
    components, count = ndimage.label(array > 0)
    spacing = labels.GetSpacing()
    keep = np.zeros(count + 1, dtype=bool)
    if seeds_lps:
        for point in seeds_lps:
            component = _component_near(components, point_to_index(labels, point), spacing)
            if component:
                keep[component] = True
            else:
                logger.info("seed %s is not on or near a lesion the model found", tuple(point))
    else:
        keep[1:] = True
    for point in background_lps:
        component = int(components[tuple(reversed(point_to_index(labels, point)))])
        keep[component] = False
    keep[0] = False
    result = np.where(keep[components], array, 0).astype(np.uint8)
    out = sitk.GetImageFromArray(result)
    out.CopyInformation(labels)
    return out
