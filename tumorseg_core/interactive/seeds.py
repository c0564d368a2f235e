"""Seeded lesion segmentation without a model (radial profile + adaptive threshold).

The user clicks inside a lesion (Shift+click adds seeds, Ctrl+click marks background).
For each seed, in a ball of ``max_radius_mm`` around it:

1. smooth (Gaussian, ~1 mm) and take the median intensity in thin spherical shells
   around the seed (the radial profile, :mod:`tumorseg_core.interactive.profile`);
2. the profile gives the lesion's outer boundary radius r (the first sharp transition
   after which the profile stays at one level; for a rim or necrotic lesion the outer
   edge of the rim), the surrounding organ's level (shell [1.3 r, 2 r]) and the level of
   the lesion's outer layer;
3. threshold half-way between the outer layer and the organ ("differs from the organ",
   so a dark core inside a bright rim is kept), take the seed's connected component,
   fill holes (3D and slice-wise) and cut thin spurs by a light opening;
4. leak protection: what lies beyond 1.6 r + 3 mm is kept only when it looks like the
   lesion itself (a connected twin); otherwise it is clipped. No lesion edge in the
   profile, or a region reaching 3/4 of the ball, gives a ``bounded`` result limited to
   a quarter of ``max_radius_mm``, or to just beyond a compact blob's radius when the
   mean intensities around the seed show one (a small lesion whose edge the profile missed).

Background points split a region that contains them (marker watershed on the gradient)
and remove components they lie in. numpy, scipy and SimpleITK only: no torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from tumorseg_core.errors import CancelledError, InputError
from tumorseg_core.interactive.morphology import bbox, component, fill_holes, open_mm
from tumorseg_core.interactive.points import point_index
from tumorseg_core.interactive.profile import (
    Levels,
    Shells,
    analyse_profile,
    blob_radius,
    core_in_organ,
    make_shells,
    radial_profile,
    refine_levels,
)

logger = logging.getLogger(__name__)

Point = tuple[float, float, float]
SEED_BALL_MM = 1.5  # neighbourhood of the seed's own level (lesions are at least ~4 mm in radius)
SMOOTH_MM = 1.0  # Gaussian sigma of the image the radial profile is taken on
FINE_MM = (0.4, 0.6, 0.8, 1.0, 1.3)  # candidate sigmas of the image that is thresholded
CNR_MIN = 6.0  # the fine image's noise: half the lesion's contrast is at least this many sigmas
SPACING_DECIMALS = 6  # spacing is rounded to 1e-6 mm before any mm threshold
OPEN_MM = 1.0  # opening radius that removes noise spurs and one-voxel bridges
RIM_BEYOND_MAX = 0.3  # a rim's level in more of the shell just outside it: an organ, not a rim
RIM_LEVEL = 0.55  # a rim is cut at this fraction of the way from the organ to its peak (blur spreads it)
OPEN_FRACTION = 0.15  # ... or this fraction of the lesion's radius, when larger
EXTEND_FILLED = 0.85  # a fallback region filling this much of its limit's sphere is extended (when asked)
EXTEND_SHELL_MM = 2.0  # ... measured on a shell this thick
EXTEND_STEP = 1.5
BLOB_LIMIT = 1.3  # a fallback around a blob reaches this many times its radius ...
BLOB_MARGIN_MM = 1.0  # ... plus this
SMALL_BALL = 33  # openings by a ball of at most this many voxels use binary morphology, larger ones distances


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
    smooth: np.ndarray  # ~1 mm Gaussian: profile and levels
    dist: np.ndarray
    spacing_zyx: np.ndarray
    seed_zyx: np.ndarray  # continuous index within the crop
    radius: float
    noise: float  # noise sigma of ``smooth``
    crop: np.ndarray  # the raw crop
    raw_noise: float
    shells: Shells  # ``dist`` grouped by profile shell up to ``radius`` (sorted once)

    def ball(self, center_zyx: np.ndarray, radius: float) -> np.ndarray:
        """Boolean ball of ``radius`` mm around a continuous crop index (z, y, x)."""
        axes = [(np.arange(n) - c) * s for n, c, s in zip(self.smooth.shape, center_zyx, self.spacing_zyx)]
        d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
        return d2 <= radius * radius

    def seed_mask(self) -> np.ndarray:
        """The seed's neighbourhood (at least the nearest voxel)."""
        mask = self.ball(self.seed_zyx, max(SEED_BALL_MM, 0.51 * float(self.spacing_zyx.max())))
        mask[tuple(int(np.clip(round(v), 0, n - 1)) for v, n in zip(self.seed_zyx, mask.shape))] = True
        return mask


def _continuous_index(image: sitk.Image, point: Sequence[float], what: str) -> np.ndarray:
    """Continuous (z, y, x) index of an LPS point; InputError when it lies outside the image."""
    return point_index(image, point, what)[::-1]


def _raw_noise(raw: np.ndarray) -> float:
    """Robust noise sigma from finite differences (edges are a minority)."""
    diffs = [np.abs(np.diff(raw, axis=a)).ravel() for a in range(3) if raw.shape[a] > 1]
    return float(np.median(np.concatenate(diffs), overwrite_input=True)) * 1.4826 / np.sqrt(2.0)


def _gain(sigma_vox: np.ndarray) -> float:
    """Noise gain ``sqrt(sum w^2)`` of a Gaussian kernel (voxel units)."""
    impulse = np.zeros((15, 15, 15), dtype=np.float64)
    impulse[7, 7, 7] = 1.0
    return float(np.sqrt((ndimage.gaussian_filter(impulse, sigma_vox, mode="constant") ** 2).sum()))


def _make_roi(array: np.ndarray, spacing_zyx: np.ndarray, seed_zyx: np.ndarray, radius: float) -> _Roi:
    """Crop a ball's bounding box around the seed and smooth it."""
    half = np.ceil(radius / spacing_zyx).astype(int) + 1
    c = np.round(seed_zyx).astype(int)
    slices = tuple(slice(max(ci - h, 0), min(ci + h + 1, n)) for ci, h, n in zip(c, half, array.shape))
    crop = array[slices].astype(np.float32)
    if not np.all(np.isfinite(crop)):
        raise InputError("the image has NaN or infinite values near the seed; fix or resample the image")
    sigma = np.clip(SMOOTH_MM / spacing_zyx, 0.0, 2.0)
    smooth = ndimage.gaussian_filter(crop, sigma, mode="nearest")
    local = seed_zyx - np.array([s.start for s in slices])
    axes = [(np.arange(n) - lc) * s for n, lc, s in zip(crop.shape, local, spacing_zyx)]
    dist = np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)
    raw_noise = _raw_noise(crop)
    return _Roi(slices, smooth, dist, spacing_zyx, local, radius, raw_noise * _gain(sigma), crop, raw_noise,
                make_shells(dist, radius))


def _smooth_within(roi: _Roi, sigma_vox: np.ndarray, reach: float) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The raw crop smoothed by ``sigma_vox`` (z, y, x voxels), exactly, but only on the box of the voxels
    nearer than ``reach`` mm to the seed (the box itself and its slices within the crop)."""
    half = np.ceil(reach / roi.spacing_zyx).astype(int) + 1
    pad = (4.0 * np.asarray(sigma_vox) + 0.5).astype(int) + 1  # the kernel's reach (truncate 4)
    c = np.round(roi.seed_zyx).astype(int)
    box = tuple(slice(max(ci - h, 0), min(ci + h + 1, n)) for ci, h, n in zip(c, half, roi.crop.shape))
    outer = tuple(slice(max(b.start - p, 0), min(b.stop + p, n)) for b, p, n in zip(box, pad, roi.crop.shape))
    sm = ndimage.gaussian_filter(roi.crop[outer], sigma_vox, mode="nearest")
    inner = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer))
    return sm[inner], box


def _fine_image(roi: _Roi, lv: Levels) -> tuple[np.ndarray, float, Levels]:
    """The least smoothed image whose noise is small against the lesion's contrast (as
    measured on that image: thin rims lose contrast when smoothed), its noise and levels."""
    reach = min(roi.radius, 2.0 * lv.radius + 3.0)
    for s in FINE_MM:
        if s >= SMOOTH_MM:
            break
        sigma = np.clip(s / roi.spacing_zyx, 0.0, 2.0)
        noise = roi.raw_noise * _gain(sigma)
        if 0.5 * abs(lv.outer - lv.background) * (1.5 if lv.layered else 1.0) < CNR_MIN * noise:
            continue  # even a better measured contrast cannot make it
        part, box = _smooth_within(roi, sigma, reach)
        fine = refine_levels(radial_profile(part, roi.dist[box], reach), lv)
        if 0.5 * abs(fine.outer - fine.background) >= CNR_MIN * noise:
            logger.debug("fine smoothing %.1f mm (noise %.3g): %s", s, noise, fine)
            return ndimage.gaussian_filter(roi.crop, sigma, mode="nearest"), noise, fine
    return roi.smooth, roi.noise, lv


def _segment(roi: _Roi, lv: Levels, sm: np.ndarray, noise: float) -> np.ndarray:
    """Region of the lesion described by ``lv``: differs from the organ by more than half the contrast."""
    sp = roi.spacing_zyx
    seed = roi.seed_mask()
    inside = roi.dist < roi.radius
    sign = 1.0 if lv.outer >= lv.background else -1.0
    contrast = abs(lv.outer - lv.background)
    # Two-sided: up to half-way to the organ, and not much beyond the lesion's own level
    # (a much brighter vessel or a much darker fat touching a bright or dark lesion).
    far_bound = lv.outer + sign * max(0.5 * contrast, 5.0 * noise)
    level = lv.background + (RIM_LEVEL if lv.rim else 0.5) * (lv.outer - lv.background)
    mask = (sign * (sm - level) > 0) & (sign * (sm - far_bound) < 0) & inside
    if lv.layered and abs(lv.core - lv.background) > 4.0 * noise:  # the core differs the other way
        sign_c = 1.0 if lv.core >= lv.background else -1.0
        mask |= (sign_c * (sm - 0.5 * (lv.core + lv.background)) > 0) & (roi.dist <= 0.7 * lv.radius)
    # Beyond this a region is a leak unless it looks like the lesion; a lesion enclosed by
    # a thin organ layer cannot reach far beyond its edge.
    near = roi.dist <= (1.2 * lv.radius + 2.0 if lv.enclosed else 1.6 * lv.radius + 3.0)
    if lv.layered:  # the rim encloses the core: fill before looking for the seed's component
        mask = fill_holes(mask & near)
    region = component(mask, seed | (roi.dist <= 0.5 * lv.radius))
    # Large lesions also lose what touches them through a contact thinner than 0.3 of their
    # radius (a wall, a vessel), small ones only noise spurs.
    opened = component(_open(region, max(OPEN_MM, OPEN_FRACTION * lv.radius), sp), seed)
    lesion_ball = roi.dist <= lv.radius  # judge the opening by what it keeps of the lesion, not of a leak
    if (opened & lesion_ball).sum() >= 0.5 * (region & lesion_ball).sum():
        region = opened
    far = region & ~near
    if far.any():
        level = float(np.median(sm[far]))
        if lv.layered or lv.enclosed or abs(level - lv.outer) > 0.25 * abs(lv.outer - lv.background):
            logger.debug("clipping %d voxels (level %.4g)", int(far.sum()), level)
            region = component(_open(region & near, 1.5, sp), seed)
    return fill_holes(region)


def _beyond_rim(roi: _Roi, lv: Levels) -> float:
    """Fraction of the shell 1.5-4 mm outside a rim that still has the rim's level.

    A rim is thin all around; an organ enclosing a lesion reaches farther on some sides,
    which the shell median of the profile does not show.
    """
    shell = (roi.dist > lv.radius + 1.5) & (roi.dist < lv.radius + 4.0)
    if not shell.any():
        return 0.0
    sign = 1.0 if lv.outer >= lv.background else -1.0
    return float(np.mean(sign * (roi.smooth[shell] - 0.5 * (lv.outer + lv.background)) > 0))


def _ball_structure(radius: float, spacing_zyx: np.ndarray) -> np.ndarray:
    """Offsets within ``radius`` mm of the centre, bool (z, y, x), distances computed as
    :func:`scipy.ndimage.distance_transform_edt` computes them (so both agree on ties)."""
    half = np.ceil(radius / spacing_zyx).astype(int)
    axes = [np.arange(-h, h + 1, dtype=np.float64) * s for h, s in zip(half, spacing_zyx)]
    d2 = (axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2) + axes[2][None, None, :] ** 2
    return np.sqrt(d2) <= radius


def _open(mask: np.ndarray, radius: float, spacing_zyx: np.ndarray) -> np.ndarray:
    """:func:`open_mm`, by binary erosion and dilation with the ball itself when it is small (the
    same voxels, several times faster on a large mask than the distance transforms)."""
    ball = _ball_structure(radius, spacing_zyx)
    if int(ball.sum()) > SMALL_BALL or not mask.any():
        return open_mm(mask, radius, spacing_zyx)
    box = bbox(mask, 1)
    eroded = np.zeros_like(mask)
    eroded[box] = ndimage.binary_erosion(mask[box], ball, border_value=1)
    if not eroded.any():
        return eroded
    box = bbox(eroded, max(ball.shape) // 2 + 1)
    out = np.zeros_like(mask)
    out[box] = ndimage.binary_dilation(eroded[box], ball)
    return out & mask


def _fallback(roi: _Roi, limit: float, extend: bool = False) -> np.ndarray:
    """Bounded region for a click without a lesion edge: similar to the seed, within ``limit`` mm.

    With ``extend``, a region that still fills most of the limit's sphere (a large lesion whose
    edge the profile missed, not a bounded one) is redone with a limit :data:`EXTEND_STEP` times
    larger, up to half the crop's radius. A compact blob around the seed (:func:`blob_radius`: a
    small lesion whose edge is too close to the seed for the profile's edge test) bounds the
    region to just beyond its radius instead, and is never extended.
    """
    blob = blob_radius(roi.smooth, roi.shells, limit, roi.noise)
    if blob is not None:
        logger.debug("fallback: a blob of radius %.1f mm around the seed", blob)
        limit, extend = min(limit, BLOB_LIMIT * blob + BLOB_MARGIN_MM), False
    seed = roi.seed_mask()
    vals = roi.smooth[seed]
    med = float(np.median(vals))
    spread = max(1.4826 * float(np.median(np.abs(vals - med))), roi.noise)
    similar = np.abs(roi.smooth - med) <= 3.0 * spread
    while True:
        region = component(_open(similar & (roi.dist <= limit), OPEN_MM, roi.spacing_zyx), seed)
        region |= seed & (roi.dist <= limit)
        shell = (roi.dist <= limit) & (roi.dist > limit - max(EXTEND_SHELL_MM, float(roi.spacing_zyx.max())))
        filled = float(region[shell].mean()) if shell.any() else 0.0
        logger.debug("fallback fills %.2f of its %.0f mm sphere", filled, limit)
        if not extend or filled < EXTEND_FILLED or limit >= 0.5 * roi.radius:
            return region
        limit = min(EXTEND_STEP * limit, 0.5 * roi.radius)


def _split_by_background(roi: _Roi, region: np.ndarray, bg_zyx: Sequence[np.ndarray]) -> np.ndarray:
    """Marker watershed on the gradient inside ``region`` between the seed and background clicks."""
    markers = np.where(region, 0, 2).astype(np.uint8)
    seed_ball = roi.seed_mask() & region
    markers[seed_ball] = 1
    for b in bg_zyx:
        markers[roi.ball(b, 1.0 + float(roi.spacing_zyx.min())) & region & ~seed_ball] = 2
    img = sitk.GetImageFromArray(roi.smooth)
    img.SetSpacing(tuple(float(s) for s in roi.spacing_zyx[::-1]))
    marker_img = sitk.GetImageFromArray(markers)
    marker_img.CopyInformation(img)
    ws = sitk.GetArrayFromImage(sitk.MorphologicalWatershedFromMarkers(sitk.GradientMagnitude(img), marker_img,
                                                                       markWatershedLine=False))
    return component((ws == 1) & region, seed_ball)


def _one_seed(roi: _Roi, limit: float, extend: bool = False) -> tuple[np.ndarray, bool]:
    """Region of one seed and whether it had to be bounded."""
    core = float(np.median(roi.smooth[roi.seed_mask()]))
    prof = radial_profile(roi.smooth, roi.dist, roi.radius, roi.shells)
    fine_img, box = _smooth_within(roi, np.clip(FINE_MM[1] / roi.spacing_zyx, 0.0, 2.0), 0.5 * roi.radius)
    fine = radial_profile(fine_img, roi.dist[box], 0.5 * roi.radius, below=0.5 * roi.radius)
    lv = analyse_profile(prof, core, roi.noise, 0.5 * roi.radius, fine)
    if lv is not None and lv.layered:
        beyond = _beyond_rim(roi, lv)
        logger.debug("rim level beyond the rim: %.2f of the shell", beyond)
        if beyond > RIM_BEYOND_MAX:  # an organ around the lesion, not a rim
            lv = core_in_organ(prof, lv)
            logger.debug("the outer layer is an organ: lesion %s", lv)
    if lv is None:
        logger.debug("no lesion edge around the seed (level %.4g, noise %.3g)", core, roi.noise)
        return _fallback(roi, limit, extend), True
    sm, noise, lv = _fine_image(roi, lv)
    region = _segment(roi, lv, sm, noise)
    logger.debug("levels %s noise %.3g: %d voxels", lv, roi.noise, int(region.sum()))
    edge = roi.dist > min(0.75 * roi.radius, roi.radius - 1.5 * float(roi.spacing_zyx.max()))
    if not region.any() or (region & edge).any():
        return _fallback(roi, limit, extend), True
    return region, False


def segment_from_seeds(image: sitk.Image, seeds_lps: Sequence[Point], background_lps: Sequence[Point] = (), *,
                       max_radius_mm: float = 60.0, progress: Optional[Callable[[float, str], None]] = None,
                       cancel: Optional[Callable[[], bool]] = None, extend_fallback: bool = False) -> SeedResult:
    """Segment the lesion(s) under seed clicks, without a model.

    Args:
        image: 3D scalar image (any spacing, any direction).
        seeds_lps: points inside lesions, LPS mm; each is segmented on its own and the
            results are united.
        background_lps: points on non-lesion tissue (Ctrl+click), LPS mm.
        max_radius_mm: the crop around each seed; lesions up to about half of it are found.
        progress: ``progress(fraction, message)``; cancel: returns True to stop.
        extend_fallback: a click without a lesion edge whose similar region fills its
            ``max_radius_mm / 4`` sphere grows on, up to ``max_radius_mm / 2`` (the interactive
            session, whose classifier and walker bound it again).

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
    # 1-ulp spacing noise (1.5000000000000002 from a direction matrix's column norm) must not
    # flip mm thresholds that are exact voxel multiples: compare on spacing rounded to 1e-6 mm.
    spacing = np.round(np.asarray(image.GetSpacing(), dtype=np.float64), SPACING_DECIMALS)[::-1]
    radius = float(max_radius_mm)
    limit = radius / 4.0
    out = np.zeros(array.shape, dtype=np.uint8)
    volumes: list[float] = []
    bounded = False
    for i, seed in enumerate(seeds):
        if cancel is not None and cancel():
            raise CancelledError()
        if progress is not None:
            progress(i / len(seeds), f"segmenting seed {i + 1}/{len(seeds)}")
        roi = _make_roi(array, spacing, seed, radius)
        region, was_bounded = _one_seed(roi, limit, extend_fallback)
        bounded |= was_bounded
        origin = np.array([s.start for s in roi.slices], float)
        local_bg = [b - origin for b in bgs if np.all(b - origin >= -0.5)
                    and np.all(b - origin <= np.array(roi.smooth.shape) - 0.5)]
        if local_bg:
            bg_vox = np.zeros_like(region)
            for b in local_bg:
                bg_vox |= roi.ball(b, 1.0 + float(spacing.min()))
            if (region & bg_vox).any():
                # A background click on the seed's own lesion (nearer to the seed than the
                # region's equivalent radius) overrides the seed; a farther one splits the region.
                r_eq = float((3.0 * region.sum() * np.prod(spacing) / (4.0 * np.pi)) ** (1.0 / 3.0))
                hits = [b for b in local_bg if (region & roi.ball(b, 1.0 + float(spacing.min()))).any()]
                if any(np.linalg.norm((b - roi.seed_zyx) * spacing) < r_eq for b in hits):
                    region = np.zeros_like(region)
                else:
                    region = _split_by_background(roi, region, local_bg)
        volumes.append(float(region.sum() * np.prod(spacing)))
        out[roi.slices] |= region.astype(np.uint8)
    if bgs:  # a background click removes whatever component it lies in, unless a seed is there too
        lab, _ = ndimage.label(out)
        seed_labels = {int(lab[tuple(np.clip(np.round(s).astype(int), 0, np.array(out.shape) - 1))]) for s in seeds}
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
