"""A cheap, conservative body mask: where a volume is anything but the air around the patient.

Used to skip sliding windows that cannot hold a tumor (issue #23). It errs on the side of
"body": a voxel is air only when it is as dark as a tight, dark population that is clearly
separated from the rest, so a volume without air (a crop inside the body, a noise volume)
is body everywhere, and nothing is skipped.

Per channel, on a grid averaged over ``block`` voxels per axis (less noise, 8x fewer voxels):

1. Otsu's threshold splits the voxels into a dark and a bright class.
2. Air is declared only if the dark class is a tight spike (robust spread, 1.4826 x MAD,
   at most :data:`AIR_SPREAD` of the distance between the two class medians): real air is
   featureless, dark tissue is textured.
3. Air is then everything below ``air + max(AIR_FRACTION x distance, AIR_SIGMAS x spread)``.

The channels' bodies are united (a voxel is body if any channel says so), holes are filled
(per axial slice, so lungs or bowel gas reached by the outside through a thin tube still
count as body, and in 3D), and the mask is dilated by ``margin`` voxels (a cube).

Works on raw or normalized intensities (an affine map or a clip of the low tail keeps air a
dark spike). Arrays are in SimpleITK order, (C, z, y, x) in and (z, y, x) out.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage

from tumorseg_core.imaging.preprocess import otsu_threshold

logger = logging.getLogger(__name__)

#: Largest robust spread of the dark class, as a fraction of the dark-bright distance, that still counts as air.
AIR_SPREAD = 0.04
#: Air ends this fraction of the way from the air level to the body's median ...
AIR_FRACTION = 0.1
#: ... or this many robust spreads above the air level, whichever is higher.
AIR_SIGMAS = 4.0
#: Default dilation of the body, voxels of the volume's grid.
MARGIN_VOXELS = 8
#: Voxels averaged per axis before thresholding.
BLOCK = 2
_MAX_SAMPLE = 2_000_000


def block_mean(array: np.ndarray, block: int) -> np.ndarray:
    """(z, y, x) float32 mean over ``block``^3 boxes; the last box of an axis repeats the edge voxel."""
    a = np.asarray(array, dtype=np.float32)
    if block <= 1:
        return a
    pads = [(0, -n % block) for n in a.shape]
    if any(p[1] for p in pads):
        a = np.pad(a, pads, mode="edge")
    z, y, x = (n // block for n in a.shape)
    return a.reshape(z, block, y, block, x, block).mean(axis=(1, 3, 5), dtype=np.float32)


def air_threshold(values: np.ndarray) -> float | None:
    """Intensity at or below which a voxel of ``values`` (any shape) is air; None when there is no air.

    None when the dark Otsu class is not a tight spike well below the bright class (no air
    in the volume, or a dark region that is textured tissue), or when a class is tiny.
    """
    flat = np.asarray(values, dtype=np.float32).ravel()
    if flat.size > _MAX_SAMPLE:
        flat = flat[:: flat.size // (_MAX_SAMPLE // 2)]
    if flat.size < 2 or not np.isfinite(flat).all() or flat.max() <= flat.min():
        return None
    cut = otsu_threshold(flat)
    dark, bright = flat[flat <= cut], flat[flat > cut]
    if dark.size < 0.01 * flat.size or bright.size < 0.01 * flat.size:
        return None
    air = float(np.median(dark))
    spread = 1.4826 * float(np.median(np.abs(dark - air)))
    distance = float(np.median(bright)) - air
    if distance <= 0 or spread > AIR_SPREAD * distance:
        return None
    return air + max(AIR_FRACTION * distance, AIR_SIGMAS * spread)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """(z, y, x) bool with the holes of every axial slice, then of the volume, filled."""
    out = np.empty_like(mask)
    for z in range(mask.shape[0]):
        out[z] = ndimage.binary_fill_holes(mask[z])
    return ndimage.binary_fill_holes(out)


def body_mask(volume: np.ndarray, margin: int = MARGIN_VOXELS, block: int = BLOCK) -> np.ndarray:
    """(z, y, x) bool: True where a (C, z, y, x) volume may be body, dilated by ``margin`` voxels.

    All True when any channel has no air (see :func:`air_threshold`). ``block`` voxels per
    axis are averaged first; the mask is made on that grid and repeated back, so it may
    reach up to ``block - 1`` voxels further than ``margin`` (never less far).
    """
    array = np.asarray(volume)
    if array.ndim != 4:
        raise ValueError(f"expected a (C, z, y, x) volume, got shape {array.shape}")
    shape = array.shape[1:]
    block = max(int(block), 1)
    coarse_body: np.ndarray | None = None
    for channel in array:
        coarse = block_mean(channel, block)
        threshold = air_threshold(coarse)
        if threshold is None:
            logger.info("body mask: no air found in a channel; every voxel counts as body")
            return np.ones(shape, dtype=bool)
        body = coarse > threshold
        coarse_body = body if coarse_body is None else coarse_body | body
    assert coarse_body is not None
    coarse_body = _fill_holes(coarse_body)
    steps = math.ceil(max(int(margin), 0) / block)
    if steps:
        coarse_body = ndimage.maximum_filter(coarse_body, size=2 * steps + 1, mode="constant", cval=False)
    full = coarse_body
    for axis in range(3):
        full = np.repeat(full, block, axis=axis)
    full = full[: shape[0], : shape[1], : shape[2]]
    logger.info("body mask: %.1f%% of the volume (margin %d voxels)", 100.0 * float(full.mean()), margin)
    return np.ascontiguousarray(full)
