"""A point the user clicked, as a continuous index of the image, checked once for every interactive door.

numpy and SimpleITK only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import InputError


def point_index(image: sitk.Image, point: Sequence[float], what: str = "point") -> np.ndarray:
    """Continuous (x, y, z) index of an LPS point of ``image``; InputError when it is not inside."""
    try:
        p = tuple(float(v) for v in point)
    except (TypeError, ValueError):
        raise InputError(f"{what} {point!r} is not a point; give three numbers (LPS mm)") from None
    if len(p) != 3 or not np.all(np.isfinite(p)):
        raise InputError(f"{what} {point!r} is not a point; give three finite numbers (LPS mm)")
    idx = np.asarray(image.TransformPhysicalPointToContinuousIndex(p))
    size = np.asarray(image.GetSize())
    if np.any(idx < -0.5) or np.any(idx > size - 0.5):
        raise InputError(f"{what} at LPS {tuple(round(v, 1) for v in p)} mm is outside the image; "
                         "click inside the volume (coordinates are LPS, not RAS)")
    return idx
