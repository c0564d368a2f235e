"""Where a lesion goes: its centre, chosen by the anatomy it must touch.

Distances are measured on a grid of about 2 mm (blocks of voxels). Placements: ``deep`` (in the brain, its radius + 3 mm from the brain's edge), and
``ventricles``, ``bone``, ``skull_base``, ``vessels``: the centre lies 0.5-0.9 radius from
that tissue class (:mod:`.tissue`), so the lesion touches or overlaps it, and at least 0.3
radius inside the brain. Lesions of one case keep 3 mm apart; in a half-head source the
centre keeps its radius + 2 mm from the cut. When a placement has no room, ``deep`` is used
(and recorded).
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from benchmarks.real_anatomy.sources import Anatomy, load_anatomy
from benchmarks.real_anatomy.tissue import distance_mm

PLACEMENTS: tuple[str, ...] = ("deep", "ventricles", "bone", "skull_base", "vessels")


COARSE_MM = 2.0  # placement works on a grid of about this spacing (distances need no finer)


def _pool(mask: np.ndarray, factors: tuple[int, int, int], how: str) -> np.ndarray:
    """Block-pool a boolean (z, y, x) mask by ``factors``: ``any`` or ``all`` voxels of each block."""
    pad = [(0, (-n) % f) for n, f in zip(mask.shape, factors)]
    padded = np.pad(mask, pad, constant_values=False)  # outside the volume: no tissue, no brain
    z, y, x = (n // f for n, f in zip(padded.shape, factors))
    blocks = padded.reshape(z, factors[0], y, factors[1], x, factors[2])
    return blocks.any(axis=(1, 3, 5)) if how == "any" else blocks.all(axis=(1, 3, 5))


@functools.lru_cache(maxsize=4)
def distance_maps(name: str) -> tuple[tuple[int, int, int], dict[str, np.ndarray]]:
    """Block factors (z, y, x) and, on that coarse grid, distances (mm, float32) of source ``name``.

    ``depth``: distance from the brain's outside (how deep a block of brain lies; a block is brain
    when all its voxels are); each tissue class: distance to its nearest block holding any of it.
    """
    anatomy = load_anatomy(name)
    spacing = np.asarray(anatomy.image.GetSpacing()[::-1], float)
    factors = tuple(max(1, int(round(COARSE_MM / s))) for s in spacing)
    sampling = spacing * np.asarray(factors)
    brain = _pool(anatomy.tissue.brain, factors, "all")
    maps = {"depth": distance_mm(~brain, sampling)}
    for cls, mask in anatomy.tissue.classes.items():
        maps[cls] = distance_mm(_pool(mask, factors, "any"), sampling)
    return factors, maps


def choose_center(
    anatomy: Anatomy,
    placement: str,
    radius_mm: float,
    taken: list[tuple[np.ndarray, float]],
    rng: np.random.Generator,
) -> tuple[Optional[np.ndarray], str]:
    """A (z, y, x) index for a lesion of ``radius_mm`` and the placement used, or ``(None, placement)`` if no room.

    ``taken``: ``(centre LPS, radius)`` of the case's earlier lesions.
    """
    factors, maps = distance_maps(anatomy.info.name)
    depth = maps["depth"]
    step = float(max(np.asarray(anatomy.image.GetSpacing()) * np.asarray(factors[::-1])))
    order = [placement] if placement == "deep" else [placement, "deep"]
    for where in order:
        if where == "deep":
            candidates = depth >= radius_mm + 3.0
        else:
            u = rng.uniform(0.5, 0.9)
            candidates = (np.abs(maps[where] - u * radius_mm) <= max(1.5, step)) & (depth >= 0.3 * radius_mm)
        idx = np.argwhere(candidates)
        if idx.size == 0:
            continue
        rng.shuffle(idx)
        for coarse in idx[:2000]:
            zyx = np.minimum(coarse * np.asarray(factors) + (np.asarray(factors) - 1) // 2,
                             np.asarray(anatomy.tissue.brain.shape) - 1)
            point = np.asarray(anatomy.image.TransformIndexToPhysicalPoint([int(v) for v in zyx[::-1]]))
            if anatomy.cut_x_lps is not None and anatomy.cut_side * (point[0] - anatomy.cut_x_lps) < radius_mm + 2:
                continue
            if any(np.linalg.norm(point - c) < radius_mm + r + 3.0 for c, r in taken):
                continue
            return zyx.astype(float), where
    return None, placement
