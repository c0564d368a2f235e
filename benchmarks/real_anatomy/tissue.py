"""Masks and tissue classes of a real head volume, found from its intensities.

All arrays are numpy ``(z, y, x)`` on the volume's own grid. MRI (T1): the brain's voxels
are split in three intensity classes (Otsu): CSF, grey and white matter. CT (HU): brain
-10-100 HU inside each axial slice's convex hull of bone, CSF below 20 HU, bone above 250 HU. The classes lesions are
placed against (:mod:`.placement`):

- ``ventricles``: CSF at least 10 mm deep inside the brain (the ventricles and deep cisterns);
- ``bone``: for CT bone itself, for MRI the brain's outer surface (the inner table of the skull);
- ``skull_base``: the ``bone`` class in the lowest third of the brain;
- ``vessels``: the brightest structures inside the brain (top 0.5% of brain intensities in
  MRI, which on a T1 are mostly vessels, choroid plexus and falx; 60-100 HU in CT, dense
  venous sinuses and calcified falx).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

CLASS_NAMES: tuple[str, ...] = ("ventricles", "bone", "skull_base", "vessels")


@dataclass
class TissueMaps:
    """Boolean maps (z, y, x) and intensity statistics of one volume."""

    body: np.ndarray  # everything that is not air
    brain: np.ndarray  # the brain (lesions live here)
    classes: dict[str, np.ndarray]  # CLASS_NAMES -> boolean map
    csf: float  # median intensity of CSF
    gray: float  # median intensity of grey matter (CT: of the brain)
    white: float  # median intensity of white matter (CT: of the brain)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean (z, y, x) mask (empty stays empty)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def distance_mm(mask: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Distance (mm, float32, z, y, x) from each voxel to the nearest voxel of ``mask`` (0 on it; inf if empty)."""
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(v) for v in spacing_zyx[::-1]))
    dist = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(dist), 0.0).astype(np.float32)


def body_mask(array: np.ndarray, threshold: float) -> np.ndarray:
    """Head mask (z, y, x): voxels above ``threshold``, largest component, closed, holes filled slice by slice."""
    mask = largest_component(array > threshold)
    mask = ndimage.binary_closing(mask, iterations=2)
    return np.stack([ndimage.binary_fill_holes(s) for s in mask])


def _edge_classes(brain: np.ndarray, bright: np.ndarray, csf: np.ndarray, spacing_zyx: np.ndarray,
                  bone: np.ndarray) -> dict[str, np.ndarray]:
    depth = distance_mm(~brain, spacing_zyx)
    ventricles = csf & (depth > 10.0)
    ventricles = ndimage.binary_opening(ventricles)
    zs = np.nonzero(brain.any(axis=(1, 2)))[0]
    low = np.zeros_like(brain)
    if zs.size:  # the lowest third of the brain (arrays are (z, y, x); superior is larger z here)
        low[zs[0]: zs[0] + max(1, (zs[-1] - zs[0]) // 3)] = True
    return {"ventricles": ventricles, "bone": bone, "skull_base": bone & low,
            "vessels": bright & brain & (depth > 2.0)}


def mri_tissue(array: np.ndarray, body: np.ndarray, brain: np.ndarray, spacing_zyx: np.ndarray) -> TissueMaps:
    """Tissue maps of a T1 MRI ``array`` (z, y, x) with its head and brain masks (superior = larger z)."""
    values = array[brain].astype(np.float32)
    thresholds = sitk.OtsuMultipleThresholdsImageFilter()
    thresholds.SetNumberOfThresholds(2)
    thresholds.Execute(sitk.GetImageFromArray(values.reshape(1, 1, -1)))
    t1, t2 = thresholds.GetThresholds()
    csf = brain & (array < t1)
    gray_sel = (values >= t1) & (values < t2)
    shell = brain & ~ndimage.binary_erosion(brain, iterations=2)  # the brain surface = inner table
    bright = array > np.percentile(values, 99.5)
    classes = _edge_classes(brain, bright, csf, spacing_zyx, shell)
    return TissueMaps(body, brain, classes, float(np.median(values[values < t1])),
                      float(np.median(values[gray_sel])), float(np.median(values[values >= t2])))


def ct_tissue(array: np.ndarray, spacing_zyx: np.ndarray) -> TissueMaps:
    """Tissue maps of a head CT ``array`` (z, y, x, HU; superior = larger z)."""
    from skimage.morphology import convex_hull_image

    body = body_mask(array, -300.0)
    bone = (array > 200.0) & body  # the head's bone (the head holder is not part of the head mask)
    # Inside the skull: each axial slice's convex hull of bone (this skull has an open craniotomy, so
    # filling the bone ring is not enough), minus the bone, soft tissue only.
    hull = np.stack([convex_hull_image(s) if s.sum() > 50 else np.zeros_like(s) for s in bone])
    soft = hull & ~ndimage.binary_dilation(bone) & (array > -10.0) & (array < 100.0)
    brain = largest_component(ndimage.binary_opening(soft, iterations=2))
    brain = np.stack([ndimage.binary_fill_holes(s) for s in brain]) & ~bone
    values = array[brain]
    csf = brain & (array < 20.0)
    bone_near = bone & ndimage.binary_dilation(brain, iterations=2)
    bright = (array > 60.0) & (array < 100.0)
    classes = _edge_classes(brain, bright, csf, spacing_zyx, bone_near)
    tissue = values[(values >= 20.0) & (values < 60.0)]
    median = float(np.median(tissue)) if tissue.size else 35.0
    return TissueMaps(body, brain, classes, float(np.median(values[values < 20.0])) if (values < 20).any() else 10.0,
                      median, median)


def save_maps(path: Path, maps: TissueMaps) -> None:
    """Store ``maps`` in an ``.npz`` (bit-packed masks, no pickle), atomically."""
    arrays = {"shape": np.asarray(maps.brain.shape), "stats": np.asarray([maps.csf, maps.gray, maps.white]),
              "body": np.packbits(maps.body), "brain": np.packbits(maps.brain)}
    arrays.update({f"class_{k}": np.packbits(v) for k, v in maps.classes.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_maps(path: Path) -> Optional[TissueMaps]:
    """The maps :func:`save_maps` stored at ``path``, or None if there is no such (readable) file."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            shape = tuple(int(v) for v in data["shape"])
            count = int(np.prod(shape))

            def unpack(key: str) -> np.ndarray:
                return np.unpackbits(data[key], count=count).reshape(shape).astype(bool)

            csf, gray, white = (float(v) for v in data["stats"])
            return TissueMaps(unpack("body"), unpack("brain"), {k: unpack(f"class_{k}") for k in CLASS_NAMES},
                              csf, gray, white)
    except (OSError, KeyError, ValueError):
        return None
