"""Lesions: the 26-connected components of each segment label of a label map.

Lesions are numbered 1..N over the whole label map: by label value, then by size (largest
first), then by position (the first voxel in (z, y, x) order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Lesion:
    """One connected component of one label value, as a boolean mask inside its bounding box."""

    lesion_id: int
    label: int
    box: tuple[slice, slice, slice]  # (z, y, x) slices of the label map's array holding the lesion
    mask: np.ndarray  # bool (z, y, x), shape of ``box``

    @property
    def offset_zyx(self) -> np.ndarray:
        """(3,) array index (z, y, x) of the box's first voxel."""
        return np.array([s.start for s in self.box])

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.mask))

    def index_zyx(self) -> np.ndarray:
        """(n, 3) array indices (z, y, x) of the lesion's voxels in the full label map."""
        return np.argwhere(self.mask) + self.offset_zyx


def find_lesions(labels_zyx: np.ndarray) -> list[Lesion]:
    """Every 26-connected component of every non-zero label value of ``labels_zyx`` (z, y, x)."""
    values = np.asarray(labels_zyx)
    if not np.issubdtype(values.dtype, np.integer):
        values = values.astype(np.int64)
    found: list[tuple[int, int, tuple[int, ...], tuple[slice, slice, slice], np.ndarray]] = []
    structure = np.ones((3, 3, 3), dtype=bool)
    for value in np.unique(values):
        if value == 0:
            continue
        # label only inside the box of this value: a small lesion in a large scan stays cheap
        where = np.nonzero(np.any(values == value, axis=(1, 2)))[0]
        zs = slice(int(where[0]), int(where[-1]) + 1)
        region = values[zs] == value
        rows = np.nonzero(region.any(axis=(0, 2)))[0]
        cols = np.nonzero(region.any(axis=(0, 1)))[0]
        ys, xs = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
        region = region[:, ys, xs]
        components, _count = ndimage.label(region, structure=structure)
        for n, box in enumerate(ndimage.find_objects(components), start=1):
            if box is None:
                continue
            mask = components[box] == n
            full_box = tuple(slice(b.start + o.start, b.stop + o.start) for b, o in zip(box, (zs, ys, xs)))
            first = tuple(int(v) for v in np.argwhere(mask)[0] + [s.start for s in full_box])
            found.append((int(value), -int(mask.sum()), first, full_box, mask))  # type: ignore[arg-type]
    found.sort(key=lambda item: item[:3])
    return [Lesion(i, value, box, mask) for i, (value, _n, _first, box, mask) in enumerate(found, start=1)]
