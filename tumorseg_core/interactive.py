"""Seeded lesion segmentation without a model (classical region growing).

The user clicks inside a lesion (and optionally Ctrl+clicks background). For each seed,
in a ball of ``max_radius_mm`` around it:

1. smooth (Gaussian, ~1 mm) and take robust lesion statistics (median / MAD) in a
   2.5 mm ball around the seed; the noise floor comes from finite differences;
2. grow the seed's connected component inside ``median +- 2.5 sigma``;
3. look at a shell 1-4 mm outside that region: brighter and darker neighbours set the
   upper and lower thresholds half-way between the lesion and each neighbour (an
   adaptive two-sided threshold, like a local Otsu); regrow, open by 1.5 mm to cut thin
   leaks, keep the seed's component and fill holes;
4. if a distinct layer surrounds the region (the bright rim around a necrotic core),
   grow that layer too and keep it when it stays a layer (filled union);
5. leak protection: a region reaching the ball's border, or one with no contrast to
   its surroundings, is clipped to a ball and reported as ``bounded``.

Background points lower the thresholds towards their intensity, split a region that
contains them (marker watershed on the gradient) and remove components they lie in.
numpy, scipy and SimpleITK only: this works without torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from tumorseg_core.errors import CancelledError, InputError

logger = logging.getLogger(__name__)

Point = tuple[float, float, float]
SEED_BALL_MM = 2.5  # statistics neighbourhood: small enough for 8 mm lesions, large enough to be robust
OPEN_MM = 1.5  # opening radius that cuts one- or two-voxel bridges into neighbouring tissue


@dataclass
class SeedResult:
    """Label map (uint8, 1 = lesion) on the input's exact grid, a user message and flags."""

    labels: sitk.Image
    message: str
    bounded: bool = False
    volumes_mm3: list[float] = field(default_factory=list)  # per seed, before the union


@dataclass
class _Roi:
    """A crop of the image around one seed, with distances to the seed in mm."""

    slices: tuple[slice, slice, slice]
    smooth: np.ndarray
    dist: np.ndarray
    spacing_zyx: np.ndarray
    seed_index: tuple[int, int, int]  # within the crop, (z, y, x)
    radius: float

    def ball(self, center_zyx: np.ndarray, radius: float) -> np.ndarray:
        """Boolean ball of ``radius`` mm around a continuous crop index (z, y, x)."""
        axes = [(np.arange(n) - c) * s for n, c, s in zip(self.smooth.shape, center_zyx, self.spacing_zyx)]
        d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
        return d2 <= radius * radius


def _continuous_index(image: sitk.Image, point: Sequence[float], what: str) -> np.ndarray:
    """Continuous (z, y, x) index of an LPS point; InputError when it lies outside the image."""
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
    return idx[::-1]


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    """Slices of ``mask``'s bounding box grown by ``pad`` voxels (clipped)."""
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - pad, 0), min(int(i.max()) + pad + 1, n)) for i, n in zip(idx, mask.shape))


def _dilate_mm(mask: np.ndarray, radius: float, spacing: np.ndarray) -> np.ndarray:
    """Dilation by a ball of ``radius`` mm (distance transform on the padded bounding box)."""
    out = np.zeros_like(mask)
    if not mask.any():
        return out
    box = _bbox(mask, int(np.ceil(radius / spacing.min())) + 1)
    out[box] = ndimage.distance_transform_edt(~mask[box], sampling=spacing) <= radius
    return out


def _open_mm(mask: np.ndarray, radius: float, spacing: np.ndarray) -> np.ndarray:
    """Opening by a ball of ``radius`` mm: erosion then dilation, via distance transforms."""
    if not mask.any():
        return mask
    box = _bbox(mask, 2)
    eroded = np.zeros_like(mask)
    eroded[box] = ndimage.distance_transform_edt(mask[box], sampling=spacing) > radius
    return _dilate_mm(eroded, radius, spacing) & mask


def _component(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Union of the connected components (6-connected) of ``mask`` touching ``seed`` voxels."""
    if not (mask & seed).any():
        return np.zeros_like(mask)
    box = _bbox(mask, 0)
    lab, _ = ndimage.label(mask[box])
    keep = np.unique(lab[seed[box] & mask[box]])
    out = np.zeros_like(mask)
    out[box] = np.isin(lab, keep[keep > 0])
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """3D hole filling on the bounding box (a dark necrotic core inside a rim is lesion)."""
    if not mask.any():
        return mask
    box = _bbox(mask, 1)
    out = mask.copy()
    out[box] = ndimage.binary_fill_holes(mask[box])
    return out


def _noise_sigma(smooth: np.ndarray) -> float:
    """Robust noise level of a smoothed crop from finite differences (edges are a minority)."""
    diffs = [np.abs(np.diff(smooth, axis=a)).ravel() for a in range(3) if smooth.shape[a] > 1]
    return float(np.median(np.concatenate(diffs))) * 1.4826 / np.sqrt(2.0)


def _make_roi(array: np.ndarray, spacing_zyx: np.ndarray, seed_zyx: np.ndarray, radius: float) -> _Roi:
    """Crop a ball's bounding box around the seed and smooth it."""
    half = np.ceil(radius / spacing_zyx).astype(int) + 1
    c = np.round(seed_zyx).astype(int)
    slices = tuple(slice(max(ci - h, 0), min(ci + h + 1, n)) for ci, h, n in zip(c, half, array.shape))
    crop = array[slices].astype(np.float32)
    sigma = np.clip(max(1.0, 0.6 * float(spacing_zyx.min())) / spacing_zyx, 0.0, 2.0)
    smooth = ndimage.gaussian_filter(crop, sigma, mode="nearest")
    local = seed_zyx - np.array([s.start for s in slices])
    axes = [(np.arange(n) - lc) * s for n, lc, s in zip(crop.shape, local, spacing_zyx)]
    dist = np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)
    seed_index = tuple(int(min(max(round(v), 0), n - 1)) for v, n in zip(local, crop.shape))
    return _Roi(slices, smooth, dist, spacing_zyx, seed_index, radius)


def _stats(values: np.ndarray, floor: float) -> tuple[float, float]:
    """Median and robust spread (MAD, at least ``floor``)."""
    med = float(np.median(values))
    return med, max(1.4826 * float(np.median(np.abs(values - med))), floor)


def _thresholds(roi: _Roi, region: np.ndarray, m: float, sigma: float,
                bg_levels: Sequence[float]) -> tuple[float, float]:
    """Two-sided interval half-way between the lesion and its brighter/darker neighbours."""
    sp = roi.spacing_zyx
    shell = _dilate_mm(region, 4.0, sp) & ~_dilate_mm(region, 1.0, sp) & (roi.dist < roi.radius)
    vals = roi.smooth[shell]
    hi, lo = m + 4.0 * sigma, m - 4.0 * sigma
    if vals.size:
        bright, dark = vals[vals > m + 2.5 * sigma], vals[vals < m - 2.5 * sigma]
        if bright.size >= 0.1 * vals.size:
            hi = min(hi, 0.5 * (m + float(np.median(bright))))
        if dark.size >= 0.1 * vals.size:
            lo = max(lo, 0.5 * (m + float(np.median(dark))))
    for b in bg_levels:  # background clicks compete: the boundary moves half-way towards them
        if b > m + 2.0 * sigma:
            hi = min(hi, 0.5 * (m + b))
        elif b < m - 2.0 * sigma:
            lo = max(lo, 0.5 * (m + b))
    return lo, hi


def _grow(roi: _Roi, seed_mask: np.ndarray, bg_levels: Sequence[float], floor: float) -> tuple[np.ndarray, float, float]:
    """Adaptive-threshold region growing from ``seed_mask``; returns region, median, sigma."""
    m, sigma = _stats(roi.smooth[seed_mask], floor)
    inside = roi.dist < roi.radius
    region = _component((np.abs(roi.smooth - m) <= 2.5 * sigma) & inside, seed_mask)
    if not region.any():
        region = seed_mask.copy()
    for _ in range(2):  # refine the interval from the shell of the current region
        lo, hi = _thresholds(roi, region, m, sigma, bg_levels)
        grown = _component((roi.smooth >= lo) & (roi.smooth <= hi) & inside, seed_mask)
        opened = _component(_open_mm(grown, OPEN_MM, roi.spacing_zyx), seed_mask)
        new = _fill_holes(opened if opened.sum() >= 0.3 * grown.sum() else grown)
        if new.sum() == region.sum() and (new == region).all():
            break
        region = new
    return region, m, sigma


def _leaks(roi: _Roi, region: np.ndarray) -> bool:
    """The region reaches the border of the ROI ball: not a closed lesion."""
    return bool((region & (roi.dist > roi.radius - 1.5 * float(roi.spacing_zyx.max()))).any())


def _equivalent_radius(region: np.ndarray, spacing: np.ndarray) -> float:
    return float((3.0 * region.sum() * np.prod(spacing) / (4.0 * np.pi)) ** (1.0 / 3.0))


def _add_rim(roi: _Roi, region: np.ndarray, m: float, sigma: float, floor: float) -> np.ndarray:
    """Add a distinct layer enclosing ``region`` (rim around a necrotic core) if it stays a layer."""
    sp = roi.spacing_zyx
    shell = _dilate_mm(region, 3.0, sp) & ~_dilate_mm(region, 1.0, sp) & (roi.dist < roi.radius)
    vals = roi.smooth[shell]
    if vals.size < 10:
        return region
    med = float(np.median(vals))
    if abs(med - m) < 4.0 * sigma:
        return region
    side = shell & ((roi.smooth > m + 2.5 * sigma) if med > m else (roi.smooth < m - 2.5 * sigma))
    if side.sum() < 0.5 * vals.size:
        return region  # not an enclosing layer, only a neighbour on one side
    rim, _, _ = _grow(roi, side, (m,), floor)
    union = _fill_holes(region | rim)
    limit = _dilate_mm(region, max(3.0, 1.6 * _equivalent_radius(region, sp)), sp)
    if _leaks(roi, union) or (union & ~limit).sum() > 0.05 * union.sum():
        return region  # the "rim" was the surrounding organ
    return union


def _split_by_background(roi: _Roi, region: np.ndarray, bg_zyx: Sequence[np.ndarray]) -> np.ndarray:
    """Marker watershed on the gradient inside ``region`` between the seed and background clicks."""
    markers = np.where(region, 0, 2).astype(np.uint8)
    seed_ball = roi.ball(np.asarray(roi.seed_index, float), SEED_BALL_MM) & region
    markers[seed_ball] = 1
    for b in bg_zyx:
        markers[roi.ball(b, 1.0 + float(roi.spacing_zyx.min())) & region & ~seed_ball] = 2
    img = sitk.GetImageFromArray(roi.smooth)
    img.SetSpacing(tuple(float(s) for s in roi.spacing_zyx[::-1]))
    grad = sitk.GradientMagnitude(img)
    ws = sitk.GetArrayFromImage(sitk.MorphologicalWatershedFromMarkers(grad, sitk.GetImageFromArray(markers),
                                                                       markWatershedLine=False))
    return _component((ws == 1) & region, seed_ball)


def segment_from_seeds(image: sitk.Image, seeds_lps: Sequence[Point], background_lps: Sequence[Point] = (), *,
                       max_radius_mm: float = 60.0, progress: Optional[Callable[[float, str], None]] = None,
                       cancel: Optional[Callable[[], bool]] = None) -> SeedResult:
    """Segment the lesion(s) under seed clicks, without a model.

    Args:
        image: 3D scalar image (any spacing, any direction).
        seeds_lps: points inside lesions, LPS mm; each grows from its own statistics and the
            results are united.
        background_lps: points on non-lesion tissue (Ctrl+click), LPS mm.
        max_radius_mm: largest lesion radius considered; also the crop around each seed.
        progress: ``progress(fraction, message)``; cancel: returns True to stop.

    Returns:
        :class:`SeedResult` whose ``labels`` is uint8 (1 = lesion) on ``image``'s exact grid.

    Raises:
        InputError: no seed, a point outside the image, a non-3D or non-scalar image.
        CancelledError: ``cancel()`` returned True.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("seeded segmentation needs a 3D single-channel image; pick one scalar volume")
    if not seeds_lps:
        raise InputError("no seed point given; click inside the lesion first")
    if not 5.0 <= float(max_radius_mm) <= 500.0:
        raise InputError(f"max_radius_mm {max_radius_mm} is out of range; use 5 to 500 mm")
    seeds = [_continuous_index(image, p, "seed") for p in seeds_lps]
    bgs = [_continuous_index(image, p, "background point") for p in background_lps]
    array = sitk.GetArrayViewFromImage(image)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)[::-1]
    radius = float(max_radius_mm)
    limit = radius / 4.0
    out = np.zeros(array.shape, dtype=np.uint8)
    volumes: list[float] = []
    bounded = False
    for i, seed in enumerate(seeds):
        if cancel is not None and cancel():
            raise CancelledError()
        if progress is not None:
            progress(i / len(seeds), f"growing seed {i + 1}/{len(seeds)}")
        roi = _make_roi(array, spacing, seed, radius)
        if not np.all(np.isfinite(roi.smooth)):
            raise InputError("the image has NaN or infinite values near the seed; fix or resample the image")
        origin = np.array([s.start for s in roi.slices], float)
        local_bg = [b - origin for b in bgs if np.all(b - origin >= -0.5)
                    and np.all(b - origin <= np.array(roi.smooth.shape) - 0.5)]
        floor = max(_noise_sigma(roi.smooth), 1e-6 * (abs(float(roi.smooth[roi.seed_index])) + 1.0))
        seed_mask = roi.ball(seed - origin, max(SEED_BALL_MM, 1.01 * float(spacing.min())))
        bg_levels = [float(np.median(roi.smooth[roi.ball(b, SEED_BALL_MM)])) for b in local_bg]
        region, m, sigma = _grow(roi, seed_mask, bg_levels, floor)
        if not _leaks(roi, region):
            region = _add_rim(roi, region, m, sigma, floor)
        shell = _dilate_mm(region, 4.0, spacing) & ~_dilate_mm(region, 1.0, spacing) & (roi.dist < radius)
        distinct = shell.any() and abs(float(np.median(roi.smooth[shell])) - m) > 2.0 * sigma
        if _leaks(roi, region) or not distinct:
            bounded = True
            region = _component(region & (roi.dist <= limit), seed_mask) | (seed_mask & (roi.dist <= limit))
        if local_bg:
            bg_vox = np.zeros_like(region)
            for b in local_bg:
                bg_vox |= roi.ball(b, 1.0 + float(spacing.min()))
            if (region & bg_vox).any():
                region = _split_by_background(roi, region, local_bg)
        volumes.append(float(region.sum() * np.prod(spacing)))
        out[roi.slices] |= region.astype(np.uint8)
    if bgs:  # a background click removes whatever component it lies in, unless a seed is there too
        lab, _ = ndimage.label(out)
        seed_labels = {int(lab[tuple(int(round(v)) for v in s)]) for s in seeds}
        for b in bgs:
            value = int(lab[tuple(np.clip(np.round(b).astype(int), 0, np.array(out.shape) - 1))])
            if value and value not in seed_labels:
                out[lab == value] = 0
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    total = float(out.sum() * np.prod(spacing))
    if bounded:
        message = (f"the clicked point does not look like a distinct lesion; result limited to {limit:.0f} mm "
                   "— add more seeds or mark background")
    else:
        message = f"segmented {total:.0f} mm³ from {len(seeds)} seed(s)"
    if progress is not None:
        progress(1.0, message)
    logger.info("seeded segmentation: %s", message)
    return SeedResult(result, message, bounded, volumes)
