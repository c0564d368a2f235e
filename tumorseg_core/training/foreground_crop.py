"""Foreground-oversampled random crops from precomputed foreground coordinates.

``RandCropByPosNegLabeld`` scans the whole label (``nonzero`` over every voxel, for the
foreground and again for the background) on every sample: a quarter of the CPU time of
a training sample, and training on a GPU is bound by that CPU work. Here the foreground
coordinates of a case are found once (:func:`foreground_coordinates`, kept with the
dataset) and a crop costs one small copy. Semantics follow ``SpatialPadd`` +
``RandCropByPosNegLabeld``: with probability ``pos / (pos + neg)`` the crop is centred on
a random foreground voxel, otherwise on a random voxel (almost always background, as
tumours are small); the crop is moved to lie inside the case, and axes shorter than the
crop are padded symmetrically with 0.

``per_lesion=True`` (augmentation ``fg_sampling: "lesion"``) centres a foreground crop on
a voxel of a lesion drawn uniformly among the case's connected lesions (26-connectivity),
instead of on a voxel drawn uniformly among all foreground voxels: a 5 mm lesion beside a
40 mm one then gets half of the foreground crops instead of ~0.2 %, which is where a
voxel-weighted loss and sampler leave the small lesions a model misses.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.transforms import MapTransform, Randomizable

COORDS_KEY = "fg_coords"
HARD_KEY = "hard_coords"  # (N, 4) hard voxels (false positives, missed lesion parts) with their lesion number
MAX_COORDS = 4096  # a random subset is as good for picking centres and bounds the memory


def foreground_coordinates(label: np.ndarray, seed: int = 0, per_lesion: bool = False) -> np.ndarray:
    """Coordinates of the label > 0 voxels of a (1, z, y, x) or (z, y, x) label; at most ~MAX_COORDS.

    Returns (N, 3) int32 (z, y, x), a uniform random subset. ``per_lesion``: (N, 4) with
    the voxel's lesion (26-connected component, 1..n) as 4th column, subsampled per lesion
    (up to ``ceil(MAX_COORDS / n)`` each) so that every lesion keeps coordinates.
    """
    spatial = np.asarray(label[0] if label.ndim == 4 else label) > 0
    rng = np.random.default_rng(seed)
    if not per_lesion:
        coords = np.argwhere(spatial).astype(np.int32)
        if len(coords) > MAX_COORDS:
            coords = coords[np.sort(rng.choice(len(coords), MAX_COORDS, replace=False))]
        return coords
    from scipy import ndimage

    components, n = ndimage.label(spatial, structure=np.ones((3, 3, 3), dtype=bool))
    return lesion_coordinates(components, n, rng)


def lesion_coordinates(lesions: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 4) int32 ``(z, y, x, lesion)`` of the voxels of a (z, y, x) map of lesion numbers 1..n.

    Subsampled per lesion (up to ``ceil(MAX_COORDS / n)`` each) so every lesion keeps
    coordinates; rows sorted by lesion.
    """
    if n == 0:
        return np.zeros((0, 4), dtype=np.int32)
    coords = np.argwhere(lesions > 0).astype(np.int32)
    ids = lesions[tuple(coords.T)].astype(np.int32)
    order = np.argsort(ids, kind="stable")
    coords, ids = coords[order], ids[order]
    per = -(-MAX_COORDS // n)
    keep = []
    for first, count in zip(*np.unique(ids, return_index=True, return_counts=True)[1:]):
        rows = np.arange(first, first + count)
        keep.append(rows if count <= per else np.sort(rng.choice(rows, per, replace=False)))
    rows = np.concatenate(keep)
    return np.column_stack([coords[rows], ids[rows]]).astype(np.int32)


def crop_start(center: int, dim: int, size: int) -> int:
    """First index of a crop of ``size`` around ``center`` on an axis of length ``dim``.

    Negative when the axis is shorter than the crop: the crop then holds the whole axis
    centred, with the odd padding voxel after (as ``SpatialPad``).
    """
    if dim <= size:
        return -((size - dim) // 2)
    return int(min(max(center - size // 2, 0), dim - size))


def crop_or_pad(array: np.ndarray, starts: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """``array[:, s:s+size]`` per spatial axis, zero where the window leaves the array. (C, *size)."""
    out = np.zeros((array.shape[0], *size), dtype=array.dtype)
    src, dst = [slice(None)], [slice(None)]
    for s, n, dim in zip(starts, size, array.shape[1:]):
        lo, hi = max(s, 0), min(s + n, dim)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


class RandForegroundCropd(Randomizable, MapTransform):
    """Crop ``keys`` (each (C, z, y, x) numpy) to ``spatial_size`` around a foreground or random voxel.

    Foreground coordinates come from ``data[COORDS_KEY]`` (:func:`foreground_coordinates`
    of the label, made with the same ``per_lesion``) when present, else from the label
    itself. The coordinates key is removed from the output. ``per_lesion``: a foreground
    crop first draws a lesion uniformly, then one of its voxels.

    ``hard_fraction``: where ``data[HARD_KEY]`` holds hard voxels (false positives, and
    the missed parts of poorly found lesions: :mod:`tumorseg_core.training.hard_negatives`),
    that share of the crops is centred on one of them (a hard lesion drawn uniformly, then
    one of its voxels); the other crops follow the pos/neg rule.
    """

    def __init__(self, keys: Sequence[Hashable], label_key: str, spatial_size: Sequence[int],
                 pos: float = 1.0, neg: float = 1.0, per_lesion: bool = False, hard_fraction: float = 0.0) -> None:
        MapTransform.__init__(self, keys)
        if pos < 0 or neg < 0 or pos + neg <= 0:
            raise ValueError(f"pos and neg must be >= 0 and not both 0, got {pos}, {neg}")
        self.label_key = label_key
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.pos_ratio = float(pos) / float(pos + neg)
        self.per_lesion = bool(per_lesion)
        if not 0.0 <= hard_fraction <= 1.0:
            raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
        self.hard_fraction = float(hard_fraction)
        self.center: tuple[int, ...] = ()

    def randomize(self, shape: Sequence[int], coords: np.ndarray, hard: np.ndarray | None = None) -> None:
        # No draw at all without hard negatives, so runs without them sample as before.
        if hard is not None and len(hard) and self.hard_fraction > 0 and self.R.random_sample() < self.hard_fraction:
            lesions = np.unique(hard[:, 3])
            hard = hard[hard[:, 3] == lesions[self.R.randint(len(lesions))]]
            self.center = tuple(int(v) for v in hard[self.R.randint(len(hard)), :3])
        elif len(coords) and self.R.random_sample() < self.pos_ratio:
            if self.per_lesion:
                if coords.shape[1] != 4:
                    raise ValueError("per-lesion crops need coordinates made with per_lesion=True")
                lesions = np.unique(coords[:, 3])
                coords = coords[coords[:, 3] == lesions[self.R.randint(len(lesions))]]
            self.center = tuple(int(v) for v in coords[self.R.randint(len(coords)), :3])
        else:
            self.center = tuple(int(self.R.randint(n)) for n in shape)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        shape = np.asarray(d[self.label_key]).shape[1:]
        coords = d.pop(COORDS_KEY, None)
        hard = d.pop(HARD_KEY, None)
        if coords is None:
            coords = foreground_coordinates(np.asarray(d[self.label_key]), per_lesion=self.per_lesion)
        self.randomize(shape, np.asarray(coords), None if hard is None else np.asarray(hard))
        starts = [crop_start(c, n, s) for c, n, s in zip(self.center, shape, self.spatial_size)]
        for key in self.key_iterator(d):
            d[key] = crop_or_pad(np.asarray(d[key]), starts, self.spatial_size)
        return d
