"""Simulated users for training the click network: where a user clicks, and what they correct.

A training sample is a cube centred on a first click inside one lesion (:mod:`.samples`). Half
the time that is all the user did, and the previous result is the model-free session's answer to
that click (the first guess the network refines). The other half the user is correcting a previous
result (that first guess, or the lesion grown, shrunk, shifted or cut short by a random amount)
with one to four clicks at the deepest points of its largest errors (a foreground click in a missed
part, a background click in a leak), as the benchmark's user does. Arrays are (z, y, x) on the cube. numpy and scipy.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from tumorseg_core.clicknet.inputs import encode

CORRECTING = 0.1  # share of samples that correct a previous result (the session asks the network for first guesses)
MAX_CORRECTIONS = 4


def deepest(mask: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) of the voxel of ``mask`` farthest from its outside."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(dist)), mask.shape))  # type: ignore[return-value]


def perturbed(target: np.ndarray, centre: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A plausible wrong previous result for ``target``: grown, shrunk, shifted, cut short or leaking."""
    kind = rng.integers(5)
    k = int(rng.integers(1, 5))
    if kind == 0:
        out = ndimage.binary_dilation(target, iterations=k)
    elif kind == 1:
        out = ndimage.binary_erosion(target, iterations=k)
    elif kind == 2:
        out = np.roll(target, tuple(int(v) for v in rng.integers(-k - 1, k + 2, size=3)), axis=(0, 1, 2))
    elif kind == 3:  # only the part near the click
        zz, yy, xx = np.ogrid[:target.shape[0], :target.shape[1], :target.shape[2]]
        d = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
        reach = max(float(d[target].max()) if target.any() else 1.0, 1.0) * rng.uniform(0.3, 0.8)
        out = target & (d <= reach)
    else:  # a leak: a blob touching the lesion
        edge = np.argwhere(target & ~ndimage.binary_erosion(target))
        out = target.copy()
        if edge.size:
            c = edge[rng.integers(len(edge))]
            r = rng.uniform(3, 12)
            zz, yy, xx = np.ogrid[:target.shape[0], :target.shape[1], :target.shape[2]]
            out |= (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
    return out


def corrections(previous: np.ndarray, target: np.ndarray, n: int) -> tuple[list, list]:
    """Up to ``n`` clicks at the deepest points of the largest error regions: (foreground, background)."""
    regions = []
    for is_fg, err in ((True, target & ~previous), (False, previous & ~target)):
        lab, count = ndimage.label(err)
        if count:
            sizes = np.bincount(lab.ravel())[1:]
            regions += [(int(s), lab == i + 1, is_fg) for i, s in enumerate(sizes) if s >= 2]
    regions.sort(key=lambda r: -r[0])
    fg, bg = [], []
    for _, region, is_fg in regions[:n]:
        (fg if is_fg else bg).append(deepest(region))
    return fg, bg


def sample(raw: np.ndarray, target: np.ndarray, guess: np.ndarray, voxel_mm: float, rng: np.random.Generator,
           correcting: Optional[bool] = None) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (C, z, y, x), target (1, z, y, x)) float32 for a cube whose centre is the first click;
    ``guess``: the model-free answer to that click on the cube."""
    centre = tuple(s // 2 for s in raw.shape)
    fg: list = [centre]
    bg: list = []
    previous = guess
    if correcting if correcting is not None else rng.random() < CORRECTING:
        if rng.random() < 0.5:
            previous = perturbed(target, centre, rng)
        more_fg, more_bg = corrections(previous, target, int(rng.integers(1, MAX_CORRECTIONS + 1)))
        fg += more_fg
        bg += more_bg
    return encode(raw, voxel_mm, fg, bg, previous.astype(np.float32)), target[None].astype(np.float32)


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and axis order (the cube is isotropic) and a little intensity noise on channels 0-1."""
    for ax in range(3):
        if rng.random() < 0.5:
            x, y = np.flip(x, axis=ax + 1), np.flip(y, axis=ax + 1)
    order = [0] + [int(a) + 1 for a in rng.permutation(3)]
    x, y = np.transpose(x, order), np.transpose(y, order)
    x = np.ascontiguousarray(x)
    if rng.random() < 0.3:
        x[:2] += rng.normal(0.0, rng.uniform(0.02, 0.15), size=x[:2].shape).astype(np.float32)
    if rng.random() < 0.3:  # contrast of the scene and of the local view
        x[:2] *= np.float32(rng.uniform(0.7, 1.3))
    return x, np.ascontiguousarray(y)
