"""Clicks answered by a learned estimator (the click network), part by part.

An estimator (:class:`Estimator`, e.g. :class:`tumorseg_core.clicknet.predict.ClickNet`) sees a
fixed cube around a foreground click with the clicks inside it and a previous answer (its own, or
for a part's first click the model-free session's answer to that click, the first guess it was
trained to refine), and returns P(lesion) on that cube. A session's foreground points fall into *parts*: a point inside an
earlier part's cube (at least :data:`INSIDE_MM` from its faces) corrects that part, any other starts
a new one centred on it (a second lesion, or a far end of a large one). Every part is answered again
after each interaction, then: the components of P > 0.5 that hold the part's foreground clicks,
holes filled, background points and anything outside a box removed; the result is the parts' union
on the image's exact grid (linear interpolation of P). numpy, scipy and SimpleITK; the estimator
brings its own framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from tumorseg_core.interactive.crop import Crop

Point = tuple[float, float, float]
INSIDE_MM = 6.0


class Estimator(Protocol):
    half_mm: float  # half the cube's side

    def probability(self, image: sitk.Image, fg_lps: Sequence[Point], bg_lps: Sequence[Point] = (),
                    previous: Optional[sitk.Image] = None) -> tuple[Crop, np.ndarray]:
        """(cube centred on ``fg_lps[0]``, P(lesion) (z, y, x) on it)."""
        ...


@dataclass(frozen=True)
class Part:
    """One cube's answer: its foreground points (the first is the cube's centre) and its mask on the image's grid."""

    fg: tuple[Point, ...]
    mask: sitk.Image


def _assign(image: sitk.Image, half_mm: float, centres: Sequence[Point], fg: Sequence[Point]) -> list[list[Point]]:
    """Foreground points grouped by part: into the first cube (existing parts' first) that holds them at least
    :data:`INSIDE_MM` from its faces, else into a new part centred on them."""
    rotate = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3).T
    centres = [np.asarray(c, dtype=np.float64) for c in centres]
    groups: list[list[Point]] = [[] for _ in centres]
    for q in fg:
        for i, c in enumerate(centres):
            if np.max(np.abs(rotate @ (np.asarray(q) - c))) <= half_mm - INSIDE_MM:
                groups[i].append(q)
                break
        else:
            centres.append(np.asarray(q, dtype=np.float64))
            groups.append([q])
    return groups


def solve(estimator: Estimator, image: sitk.Image, fg: Sequence[Point], bg: Sequence[Point],
          parts: Sequence[Part], first_guess: Callable[[Point], sitk.Image],
          box_mask: Optional[np.ndarray] = None) -> tuple[sitk.Image, tuple[Part, ...]]:
    """The union of every part's answer (uint8 0/1 on ``image``'s grid) and the new parts.

    ``parts``: the previous interaction's parts (their masks are the estimator's previous answer);
    ``first_guess(point)``: a new part's previous answer (the model-free answer to its first click);
    ``box_mask``: (z, y, x) bool on the image's grid, the inside of a box (None: no box)."""
    groups = _assign(image, estimator.half_mm, [p.fg[0] for p in parts], fg)
    out = np.zeros(image.GetSize()[::-1], dtype=bool)
    new_parts = []
    for i, group in enumerate(groups):
        if not group:
            continue
        old = parts[i] if i < len(parts) else None
        points = ([old.fg[0]] if old is not None else []) + [q for q in group if old is None or q != old.fg[0]]
        previous = old.mask if old is not None else first_guess(points[0])
        crop, prob = estimator.probability(image, points, bg, previous)
        seg = prob > 0.5
        hard = crop.ball(points, 0.0)
        lab, n = ndimage.label(seg)
        if n:
            keep = np.unique(lab[hard & seg])
            seg = np.isin(lab, keep[keep > 0]) if keep.size and keep.max() > 0 else seg & False
        seg = ndimage.binary_fill_holes(seg) & ~crop.ball(bg, 0.0)
        values = np.where(seg, np.maximum(prob, 0.51), np.minimum(prob, 0.49))
        mask = crop.to_image(values, image)
        arr = sitk.GetArrayViewFromImage(mask) > 0
        if box_mask is not None:
            arr = arr & box_mask
        out |= arr
        new_parts.append(Part(tuple(points), mask))
    result = sitk.GetImageFromArray(out.astype(np.uint8))
    result.CopyInformation(image)
    return result, tuple(new_parts)
