"""Checks of one case's inputs that can fail before any network is built or run.

A wrong number of inputs or a seed outside the image is known from the inputs' headers
(or the read images) alone; finding it only after minutes of inference wastes the
user's time. :class:`~tumorseg_core.inference.segmenter.Segmenter` calls these between
reading and predicting (and, for files, from their headers before reading the voxels).

Points are LPS millimetres; grids are :class:`~tumorseg_core.imaging.geometry.GridGeometry`
(ITK order: size, spacing, origin, direction). No torch import here.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import InputError
from tumorseg_core.imaging import io, stream_resample
from tumorseg_core.imaging.geometry import GridGeometry
from tumorseg_core.options import SegmentOptions


def check_input_count(items: Sequence[Any], num_inputs: int, model_name: str,
                      modalities: Sequence[str]) -> None:
    """InputError unless ``items`` give the model's ``num_inputs`` channels.

    One image file holding exactly ``num_inputs`` channels (4D or vector-valued) counts as
    them all (:func:`tumorseg_core.imaging.io.read_images` splits it). Only headers are read.
    """
    if len(items) == num_inputs:
        return
    if len(items) == 1 and isinstance(items[0], (str, os.PathLike)) and io.file_channels(items[0]) == num_inputs:
        return
    held = ""
    if len(items) == 1 and isinstance(items[0], (str, os.PathLike)):
        n = io.file_channels(items[0])
        held = f" ({n} channels in one file)" if n > 1 else ""
    raise InputError(
        f"model '{model_name}' expects {num_inputs} input image(s) ({', '.join(modalities)}), "
        f"got {len(items)}{held}; pass one 3D image per modality in that order"
    )


def first_grid(items: Sequence[Any]) -> Optional[GridGeometry]:
    """The first input's grid without reading its voxels (a file's header, an image's geometry), or None."""
    if not items:
        return None
    first = items[0]
    if isinstance(first, sitk.Image):
        return GridGeometry.of(first) if first.GetDimension() == 3 else None
    if isinstance(first, (str, os.PathLike)):
        return stream_resample.header_grid(first)
    return None


def _outside(grid: GridGeometry, point: Sequence[float], tolerance: float) -> bool:
    """True if ``point`` maps outside ``grid``'s voxels (continuous index beyond [-0.5 - tol, n - 0.5 + tol))."""
    index = grid.located().TransformPhysicalPointToContinuousIndex([float(c) for c in point])
    return any(not (-0.5 - tolerance <= c < n - 0.5 + tolerance) or not np.isfinite(c)
               for c, n in zip(index, grid.size))


def check_points(options: SegmentOptions, image_grid: GridGeometry, model_grid: Optional[GridGeometry] = None) -> None:
    """InputError if a seed or background point lies outside the image or the model's field of view.

    ``image_grid``: the first input's grid, where the label map and the clicks live (a point
    must fall in one of its voxels, the rule ``interactive.refine.point_to_index`` applies
    after inference). ``model_grid``: the grid the network sees (points within half a model
    voxel of it count as inside: the label map reaches that far).
    """
    for kind, points in (("seed", options.seeds_lps), ("background point", options.background_lps)):
        for point in points:
            shown = tuple(round(float(c), 1) for c in point)
            if _outside(image_grid, point, 0.0):
                raise InputError(
                    f"{kind} {shown} mm (LPS) lies outside the image; give a point inside the volume "
                    "(LPS coordinates: RAS with x and y negated)"
                )
            if model_grid is not None and _outside(model_grid, point, 0.5):
                raise InputError(
                    f"{kind} {shown} mm (LPS) lies outside the region the model sees; "
                    "give a point further inside the volume"
                )



def check_model_grid(grid: GridGeometry, spacing_xyz: Optional[Sequence[float]], name: str) -> None:
    """InputError if ``grid`` resampled to the model's spacing would be too large
    (``stream_resample.check_model_grid_size``): before any resampling or network."""
    stream_resample.check_model_grid_size(grid, spacing_xyz, name)
