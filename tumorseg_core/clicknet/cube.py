"""What the click network is asked for one set of clicks: the cube around the first foreground click and
its input channels. numpy and SimpleITK only, so Slicer's UI process builds the question and only the
forward pass runs where torch is (:mod:`.predict` in the same process, or the worker)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from tumorseg_core.clicknet.grid import click_grid
from tumorseg_core.clicknet.inputs import encode
from tumorseg_core.interactive.crop import Crop


def cube_inputs(image: sitk.Image, fg_lps: Sequence[Sequence[float]], bg_lps: Sequence[Sequence[float]] = (),
                previous: Optional[sitk.Image] = None) -> tuple[Crop, np.ndarray]:
    """(the cube centred on ``fg_lps[0]``, its inputs (CHANNELS, z, y, x) float32): the clicks inside the cube
    and ``previous`` (a label map on the image's grid, the network's last answer) sampled onto it."""
    crop = click_grid(image, fg_lps[0])
    inside = [crop.index_of(p) for p in fg_lps if crop.contains(p)]
    outside = [crop.index_of(p) for p in bg_lps if crop.contains(p)]
    prev = crop.from_image(previous).astype(np.float32) if previous is not None else None
    return crop, encode(crop.array, crop.voxel_mm, inside, outside, prev)
