"""Synthetic tumor phantoms with exact ground truth (numpy, scipy and SimpleITK only).

Used by the tests, ``tumorseg demo`` and to train the shipped default model. The scene
(body, organ, organ-like blobs, vessels, lobulated lesions) lives in physical LPS
millimetres and is sampled through the requested grid, so any spacing and any
(oblique) direction give geometrically consistent images and truths::

    from tumorseg_core.synthetic import make_phantom
    ph = make_phantom(3, modality="ct", spacing_xyz=(0.8, 0.8, 3.0))
    ph.image, ph.truth, ph.lesions[0].center_lps

May import: ``tumorseg_core.errors`` and ``tumorseg_core.imaging`` (numpy, scipy, SimpleITK;
never torch); training and the demo build on it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import InputError
from tumorseg_core.synthetic.render import LESION_KINDS, choose_kinds, render
from tumorseg_core.synthetic.scene import build_scene
from tumorseg_core.synthetic.shapes import Grid

logger = logging.getLogger(__name__)

MODALITIES = ("mri", "ct", "pet")

__all__ = ["LESION_KINDS", "MODALITIES", "Lesion", "MultimodalPhantom", "Phantom", "make_multimodal_phantom",
           "make_phantom", "write_phantom"]


@dataclass(frozen=True)
class Lesion:
    """One lesion: centre (LPS mm), nominal radius (mm), contrast kind, volume of its truth voxels (mm^3)."""

    center_lps: tuple[float, float, float]
    radius_mm: float
    kind: str
    volume_mm3: float


@dataclass
class Phantom:
    """A synthetic case: float32 image, uint8 truth (1 = whole tumor) on the same grid."""

    image: sitk.Image
    truth: sitk.Image
    lesions: list[Lesion]
    modality: str


@dataclass
class MultimodalPhantom:
    """Several images of one scene (possibly on different grids) and the truth on each grid.

    ``truth`` is on the first image's grid; ``truths[i]`` on ``images[i]``'s grid;
    ``kinds[i][j]`` is lesion j's contrast kind in image i.
    """

    images: list[sitk.Image]
    truth: sitk.Image
    truths: list[sitk.Image]
    lesions: list[Lesion]
    modalities: list[str]
    kinds: list[list[str]] = field(default_factory=list)


def _grid(size_xyz: Sequence[int], spacing_xyz: Sequence[float], origin: Optional[Sequence[float]],
          direction: Optional[Any]) -> Grid:
    """Validate grid arguments; the default origin puts the grid centre at (0, 0, 0)."""
    size = tuple(int(n) for n in size_xyz)
    spacing = tuple(float(s) for s in spacing_xyz)
    if len(size) != 3 or min(size) < 8:
        raise InputError(f"size_xyz {tuple(size_xyz)} is invalid; give three integers of at least 8")
    if len(spacing) != 3 or not all(0.05 <= s <= 50.0 for s in spacing):
        raise InputError(f"spacing_xyz {tuple(spacing_xyz)} is invalid; give three spacings between 0.05 and 50 mm")
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64).reshape(-1)
    if d.size != 9 or not np.allclose(d.reshape(3, 3) @ d.reshape(3, 3).T, np.eye(3), atol=1e-4):
        raise InputError("direction must be a 3x3 orthonormal matrix (9 numbers, row-major like SimpleITK)")
    d = d.reshape(3, 3)
    if origin is None:
        o = -d @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2.0)
    else:
        o = np.asarray(origin, dtype=np.float64)
        if o.shape != (3,) or not np.all(np.isfinite(o)):
            raise InputError(f"origin {origin!r} is invalid; give three finite numbers in LPS mm")
    return Grid(size, spacing, tuple(float(v) for v in o), d)


def _check_common(modality: str, lesion_radius_mm: Sequence[float], n_lesions: Optional[int],
                  lesion_kinds: Optional[Sequence[str]]) -> tuple[float, float]:
    if modality not in MODALITIES + ("random",):
        raise InputError(f"unknown modality {modality!r}; use one of mri, ct, pet, random")
    lo, hi = (float(v) for v in lesion_radius_mm)
    if not 0.5 <= lo <= hi:
        raise InputError(f"lesion_radius_mm {tuple(lesion_radius_mm)} is invalid; give (min, max) with 0.5 <= min <= max")
    if n_lesions is not None and not 0 <= int(n_lesions) <= 20:
        raise InputError(f"n_lesions {n_lesions} is invalid; give 0 to 20 (or None for 1-3)")
    if lesion_kinds is not None and (not lesion_kinds or any(k not in LESION_KINDS for k in lesion_kinds)):
        raise InputError(f"lesion_kinds {lesion_kinds!r} is invalid; choose from {', '.join(LESION_KINDS)}")
    return lo, hi


def _scene_for(seed: int, grid: Grid, n_lesions: Optional[int], lesion_free: bool,
               radius: tuple[float, float]):
    children = np.random.SeedSequence(int(seed)).spawn(2)
    rng_geo = np.random.default_rng(children[1])
    n = 0 if lesion_free else (int(n_lesions) if n_lesions is not None else int(rng_geo.integers(1, 4)))
    return build_scene(rng_geo, grid, n, radius)


def _streams(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent intensity and noise streams of image ``index`` (children 2+2i, 3+2i)."""
    children = np.random.SeedSequence(int(seed)).spawn(4 + 2 * index)
    return np.random.default_rng(children[2 + 2 * index]), np.random.default_rng(children[3 + 2 * index])


def _pick_modality(seed: int, modality: str) -> str:
    if modality != "random":
        return modality
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(1)[0])
    return str(rng.choice(MODALITIES, p=[0.45, 0.35, 0.2]))


def make_phantom(seed: int, *, size_xyz: Sequence[int] = (96, 96, 80),
                 spacing_xyz: Sequence[float] = (1.5, 1.5, 1.5), origin: Optional[Sequence[float]] = None,
                 direction: Optional[Any] = None, modality: str = "mri", n_lesions: Optional[int] = None,
                 lesion_radius_mm: Sequence[float] = (2.5, 20.0), lesion_free: bool = False,
                 noise: Optional[float] = None, bias_field: Optional[float] = None,
                 partial_volume: bool = True, lesion_kinds: Optional[Sequence[str]] = None) -> Phantom:
    """A random phantom, deterministic for given ``seed`` and arguments.

    Args:
        seed: random seed; geometry, intensities and noise use independent streams of it.
        size_xyz, spacing_xyz, origin, direction: the image grid (x, y, z order; LPS mm;
            ``direction`` row-major 9 numbers or 3x3, default identity; default origin
            puts the grid centre at (0, 0, 0)). The body is scaled to fit the grid.
        modality: ``"mri"``, ``"ct"`` (HU), ``"pet"`` (SUV-like) or ``"random"``.
        n_lesions: number of lesions (None: random 1-3); fewer are placed if they do not fit.
        lesion_radius_mm: (min, max) nominal radius, sampled log-uniformly.
        lesion_free: no lesion at all; the truth is empty.
        noise: multiple of the modality's typical noise level (0 none; None random 0.6-1.5).
        bias_field: amplitude of the multiplicative smooth bias (0.2 = about +-20 %; None:
            random for MRI, none for CT/PET).
        partial_volume: blend voxels cut by a boundary (False: hard edges).
        lesion_kinds: allowed contrast kinds (``hyper``, ``hypo``, ``necrotic``, ``rim``).

    Returns:
        :class:`Phantom` with ``image`` (float32) and ``truth`` (uint8) on the grid.
    """
    lo_hi = _check_common(modality, lesion_radius_mm, n_lesions, lesion_kinds)
    grid = _grid(size_xyz, spacing_xyz, origin, direction)
    mod = _pick_modality(seed, modality)
    scene = _scene_for(seed, grid, n_lesions, lesion_free, lo_hi)
    rng_int, rng_noise = _streams(seed, 0)
    kinds = choose_kinds(rng_int, mod, len(scene.lesions), lesion_kinds)
    img, truth, volumes = render(scene, grid, mod, rng_int, rng_noise, kinds, noise=noise,
                                 bias_field=bias_field, partial_volume=partial_volume)
    lesions = [Lesion(tuple(float(v) for v in les.main.center), float(les.radius_mm), k, vol)
               for les, k, vol in zip(scene.lesions, kinds, volumes)]
    logger.debug("phantom seed=%d %s: %d lesions", seed, mod, len(lesions))
    return Phantom(grid.to_image(img), grid.to_image(truth), lesions, mod)


def make_multimodal_phantom(seed: int, modalities: Sequence[str] = ("ct", "pet"), *,
                            grids: Optional[Sequence[Optional[dict]]] = None,
                            size_xyz: Sequence[int] = (96, 96, 80), spacing_xyz: Sequence[float] = (1.5, 1.5, 1.5),
                            origin: Optional[Sequence[float]] = None, direction: Optional[Any] = None,
                            n_lesions: Optional[int] = None, lesion_radius_mm: Sequence[float] = (2.5, 20.0),
                            lesion_free: bool = False, noise: Optional[float] = None,
                            bias_field: Optional[float] = None, partial_volume: bool = True,
                            lesion_kinds: Optional[Sequence[str]] = None) -> MultimodalPhantom:
    """Several modalities of one scene, e.g. CT + PET, for multi-input models.

    ``grids[i]`` (optional) overrides ``size_xyz``/``spacing_xyz``/``origin``/``direction``
    for image i, so inputs can live on different grids (to test resampling); the scene
    is built on the first grid. Lesion contrast kinds are chosen per modality.
    """
    if not modalities:
        raise InputError("modalities is empty; give at least one of mri, ct, pet")
    lo_hi = _check_common("mri", lesion_radius_mm, n_lesions, lesion_kinds)
    if any(m not in MODALITIES for m in modalities):
        raise InputError(f"modalities {tuple(modalities)!r} is invalid; use mri, ct or pet")
    if grids is not None and len(grids) != len(modalities):
        raise InputError(f"grids has {len(grids)} entries for {len(modalities)} modalities; give one per modality")
    base = {"size_xyz": size_xyz, "spacing_xyz": spacing_xyz, "origin": origin, "direction": direction}
    grid_list = []
    for i in range(len(modalities)):
        g = dict(base)
        extra = (grids[i] if grids is not None else None) or {}
        unknown = set(extra) - set(base)
        if unknown:
            raise InputError(f"grids[{i}] has unknown keys {sorted(unknown)}; use size_xyz, spacing_xyz, origin, direction")
        g.update(extra)
        grid_list.append(_grid(g["size_xyz"], g["spacing_xyz"], g["origin"], g["direction"]))
    scene = _scene_for(seed, grid_list[0], n_lesions, lesion_free, lo_hi)
    images, truths, kinds_all, volumes0 = [], [], [], []
    for i, (mod, grid) in enumerate(zip(modalities, grid_list)):
        rng_int, rng_noise = _streams(seed, i)
        kinds = choose_kinds(rng_int, mod, len(scene.lesions), lesion_kinds)
        img, truth, volumes = render(scene, grid, mod, rng_int, rng_noise, kinds, noise=noise,
                                     bias_field=bias_field, partial_volume=partial_volume)
        images.append(grid.to_image(img))
        truths.append(grid.to_image(truth))
        kinds_all.append(kinds)
        if i == 0:
            volumes0 = volumes
    lesions = [Lesion(tuple(float(v) for v in les.main.center), float(les.radius_mm), kinds_all[0][j], volumes0[j])
               for j, les in enumerate(scene.lesions)]
    return MultimodalPhantom(images, truths[0], truths, lesions, list(modalities), kinds_all)


def write_phantom(phantom: Union[Phantom, MultimodalPhantom], folder: Union[str, Path],
                  stem: str) -> dict[str, Path]:
    """Write a phantom as NIfTI files in ``folder`` (created if needed).

    Returns ``{"image": <stem>.nii.gz, "truth": <stem>_truth.nii.gz}`` for a
    :class:`Phantom`; for a :class:`MultimodalPhantom` the images are ``image_0000``,
    ``image_0001``, ... (files ``<stem>_0000.nii.gz``, nnU-Net style) plus ``truth``.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", stem or ""):
        raise InputError(f"stem {stem!r} is not a plain file name; use letters, digits, '.', '_' or '-'")
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create folder {out}: {exc.strerror}; choose a writable folder") from exc
    paths: dict[str, Path] = {}
    if isinstance(phantom, MultimodalPhantom):
        items = [(f"image_{i:04d}", out / f"{stem}_{i:04d}.nii.gz", img) for i, img in enumerate(phantom.images)]
    else:
        items = [("image", out / f"{stem}.nii.gz", phantom.image)]
    items.append(("truth", out / f"{stem}_truth.nii.gz", phantom.truth))
    for key, path, img in items:
        sitk.WriteImage(img, str(path), True)
        paths[key] = path
    return paths
