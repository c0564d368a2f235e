"""Skip the sliding windows that lie wholly outside the body (air, table): issue #23 part 3.

A window is run only if it touches the body mask
(:func:`~tumorseg_core.imaging.body_mask.body_mask`, dilated by a margin) of the volume it
tiles. A skipped window still counts in the stitching weights (the predictor keeps every
window's Gaussian in :class:`~tumorseg_core.inference.sliding_window.SlabWeights`): it adds
zero foreground, i.e. it votes "background" with the weight the exhaustive pass gives it.
So wherever the network would have said background in that window, which it does in air,
the labels equal the exhaustive pass's; voxels only skipped windows cover are background
(uncertainty 0, probability 0). Where a skipped window overlaps a run one, the blend lacks
the skipped window's (near zero, in air) foreground share: such voxels lie at least the
margin away from the body.

Coordinates are window starts (z, y, x) on the grid padded by
:func:`~tumorseg_core.inference.sliding_window.pad_to_window` (no size divisor), the
predictor's grid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from tumorseg_core.imaging.body_mask import MARGIN_VOXELS, body_mask
from tumorseg_core.inference.sliding_window import pad_to_window

logger = logging.getLogger(__name__)

Start = tuple[int, int, int]


def windows_touching(mask: np.ndarray, starts: Sequence[Start], patch_zyx: Sequence[int]) -> list[Start]:
    """The ``starts`` (same order) whose (pz, py, px) window holds a True voxel of the padded (z, y, x) ``mask``."""
    pz, py, px = (int(p) for p in patch_zyx)
    return [s for s in starts if mask[s[0] : s[0] + pz, s[1] : s[1] + py, s[2] : s[2] + px].any()]


def windows_in_body(volume: np.ndarray, starts: Sequence[Start], patch_zyx: Sequence[int],
                    margin: int = MARGIN_VOXELS) -> list[Start]:
    """The ``starts`` (same order) whose window touches the body of ``volume`` (C, z, y, x), unpadded.

    ``margin``: dilation of the body, voxels. Every start is kept when the volume has no air.
    """
    mask = body_mask(volume, margin=margin)
    if mask.all():
        return list(starts)
    padded, _ = pad_to_window(mask[None], patch_zyx)  # padding is air (False)
    kept = windows_touching(padded[0], starts, patch_zyx)
    logger.info("window skipping: %d of %d window(s) lie wholly outside the body and are not run",
                len(starts) - len(kept), len(starts))
    return kept
