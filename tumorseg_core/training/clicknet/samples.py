"""Training cubes for the click network from a labelled folder (``images/`` + ``labels/``).

Every lesion (connected component of the label, at least :data:`MIN_ML`) gives cubes
(:mod:`.grid`) centred on clicks a user would make: its deepest point (the farthest from its
outside, in mm) and a few points drawn where it is at least half that deep. The target is
that lesion alone (other lesions in the cube are background: the user pointed at this one),
nearest-neighbour on the cube. With each cube goes the model-free session's answer to that click
(:class:`tumorseg_core.interactive.InteractiveSession`, one click), the first guess the network
refines. numpy, scipy and SimpleITK.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from tumorseg_core.clicknet.grid import click_grid
from tumorseg_core.interactive import InteractiveSession

logger = logging.getLogger(__name__)

MIN_ML = 0.02
EXTRA_CLICKS = 2  # besides the deepest point


def _pairs(folder: Path) -> Iterator[tuple[Path, Path]]:
    for label in sorted((folder / "labels").glob("*.nii*")):
        name = label.name.split(".")[0]
        images = sorted((folder / "images").glob(f"{name}*.nii*"))
        if images:
            yield images[0], label


def lesion_cubes(image: sitk.Image, label: sitk.Image, rng: np.random.Generator,
                 extra: int = EXTRA_CLICKS) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """(raw cube, target cube bool, first-guess cube bool, voxel mm) for clicks in every lesion of ``label``
    (on ``image``'s grid)."""
    arr = sitk.GetArrayViewFromImage(label) > 0
    spacing = np.asarray(image.GetSpacing())[::-1]
    lab, n = ndimage.label(arr)
    for k in range(1, n + 1):
        comp = lab == k
        if comp.sum() * float(np.prod(spacing)) < MIN_ML * 1000.0:
            continue
        box = ndimage.find_objects(comp.astype(np.uint8))[0]
        sub = comp[box]
        dist = ndimage.distance_transform_edt(np.pad(sub, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        best = np.unravel_index(int(np.argmax(dist)), sub.shape)
        deep = np.argwhere(dist >= 0.5 * dist.max())
        picks = [np.asarray(best)] + [deep[i] for i in rng.integers(len(deep), size=extra)]
        one = sitk.GetImageFromArray(comp.astype(np.uint8))
        one.CopyInformation(label)
        for p in picks:
            zyx = np.asarray(p) + np.array([s.start for s in box])
            centre = image.TransformIndexToPhysicalPoint(tuple(int(v) for v in zyx[::-1]))
            crop = click_grid(image, centre)
            target = sitk.Resample(one, crop.grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            guess = crop.from_image(InteractiveSession(image).add_click(centre))
            yield crop.array, sitk.GetArrayFromImage(target) > 0, guess, crop.voxel_mm


def build(folders: list[Path], out: Path, seed: int = 0) -> int:
    """Write every cube of ``folders`` into ``out`` (one ``.npz`` per case, skipped when present); returns the count."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    count = 0
    for folder in folders:
        for image_path, label_path in _pairs(folder):
            dest = out / f"{folder.name}_{label_path.name.split('.')[0]}.npz"
            if dest.exists():
                count += len(np.load(dest)["raw"])
                continue
            image = sitk.ReadImage(str(image_path), sitk.sitkFloat32)
            if image.GetNumberOfComponentsPerPixel() > 1:
                image = sitk.VectorIndexSelectionCast(image, 0)
            label = sitk.ReadImage(str(label_path))
            cubes = list(lesion_cubes(image, label, rng))
            if not cubes:
                continue
            tmp = dest.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, raw=np.stack([c[0] for c in cubes]).astype(np.float32),
                                target=np.stack([c[1] for c in cubes]), guess=np.stack([c[2] for c in cubes]),
                                voxel=np.array([c[3] for c in cubes]))
            tmp.replace(dest)
            count += len(cubes)
            logger.info("%s: %d cubes", dest.name, len(cubes))
    return count


def load(out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All cubes of ``out``: raw (N, z, y, x) float32, target and first guess (N, z, y, x) bool, voxel (N,)."""
    files = sorted(out.glob("*.npz"))
    parts = [np.load(f) for f in files if not f.name.endswith(".tmp.npz")]
    return tuple(np.concatenate([p[k] for p in parts]) for k in ("raw", "target", "guess", "voxel"))  # type: ignore
