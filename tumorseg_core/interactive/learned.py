"""A learned first guess for a click: the click network refines the model-free grower's answer.

An estimator (:class:`Estimator`, e.g. :class:`tumorseg_core.clicknet.predict.ClickNet`) sees a fixed
cube around a foreground click, the background clicks inside it and a previous answer (here the
model-free session's answer to that one click, the first guess it was trained to refine), and
returns P(lesion) on that cube. :func:`answer` turns it into the lesion estimate a session grows from
a click: the components of P > 0.5 holding the click, holes filled, background clicks out, on the
image's exact grid (linear interpolation of P). The session's classifier and random walker then do
what they do with a grown estimate (:mod:`.session`). numpy, scipy and SimpleITK; the estimator brings
its own framework.
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from tumorseg_core.interactive.crop import Crop

Point = tuple[float, float, float]


class Estimator(Protocol):
    def probability(self, image: sitk.Image, fg_lps: Sequence[Point], bg_lps: Sequence[Point] = (),
                    previous: Optional[sitk.Image] = None) -> tuple[Crop, np.ndarray]:
        """(cube centred on ``fg_lps[0]``, P(lesion) (z, y, x) on it)."""
        ...


def answer(estimator: Estimator, image: sitk.Image, fg: Sequence[Point], bg: Sequence[Point],
           previous: sitk.Image) -> sitk.Image:
    """The estimator's answer for one cube (centred on ``fg[0]``), uint8 0/1 on ``image``'s grid: the
    components of P > 0.5 holding the foreground clicks, holes filled, background clicks out."""
    crop, prob = estimator.probability(image, fg, bg, previous)
    seg = prob > 0.5
    lab, n = ndimage.label(seg)
    if n:
        keep = np.unique(lab[crop.ball(fg, 0.0) & seg])
        keep = keep[keep > 0]
        seg = np.isin(lab, keep) if keep.size else np.zeros_like(seg)
    seg = ndimage.binary_fill_holes(seg) & ~crop.ball(bg, 0.0)
    return crop.to_image(np.where(seg, np.maximum(prob, 0.51), np.minimum(prob, 0.49)), image)
