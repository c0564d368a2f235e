"""Intensity normalization, denoising and foreground cropping before inference.

Arrays are numpy volumes in SimpleITK order **(z, y, x)** (or channel-first
``(C, z, y, x)`` where stated). Schemes come from the model manifest, so an invalid
scheme raises :class:`~tumorseg_core.errors.ModelPackageError`.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import ModelPackageError

logger = logging.getLogger(__name__)

NORMALIZATION_TYPES = ("ct", "zscore", "minmax", "none")
DENOISE_METHODS = ("gaussian", "curvature_flow", "nlm")
#: Upper bound on patch-based (NLM) iterations: each one takes seconds per megavoxel.
MAX_NLM_ITERATIONS = 3
_EPS = 1e-8


def _finite(array: np.ndarray) -> np.ndarray:
    """float32 copy of ``array`` with NaN/Inf replaced by 0 (inputs are checked on reading;
    this keeps normalization NaN-free whatever it is given)."""
    out = np.asarray(array, dtype=np.float32).copy()
    if not np.isfinite(out).all():
        logger.warning("normalize: %d non-finite voxels replaced by 0", int((~np.isfinite(out)).sum()))
        out[~np.isfinite(out)] = 0.0
    return out


def normalize(array: np.ndarray, scheme: Optional[dict]) -> np.ndarray:
    """Normalize intensities of one channel; any shape, returns float32 of the same shape.

    ``scheme["type"]``:

    - ``ct``: ``window: [lo, hi]``; clip to the window then scale to [0, 1].
    - ``zscore``: subtract mean, divide by std. ``nonzero: true`` computes the statistics
      over nonzero voxels only and keeps zero voxels at 0 (skull-stripped MRI);
      ``clip_percentiles: [p_lo, p_hi]`` clips at those percentiles first.
      ``foreground: "otsu"`` computes the statistics (and percentiles) over the voxels
      above an Otsu threshold only: the body, not the air around it. This makes one
      model work on CT (HU, air at -1000) and MRI alike, since soft-tissue contrast is
      then measured against the body's own spread rather than the air-body jump.
    - ``minmax``: scale to [0, 1].
    - ``none`` (or ``scheme=None``): cast only.

    Constant input gives zeros, never NaN. Unknown types raise ModelPackageError.
    """
    scheme = scheme or {"type": "none"}
    kind = str(scheme.get("type", "none")).lower()
    x = _finite(array)
    if kind == "none":
        return x
    if kind == "ct":
        window = scheme.get("window")
        try:
            lo, hi = (float(v) for v in window)  # type: ignore[union-attr]
        except (TypeError, ValueError) as exc:
            raise ModelPackageError(
                f"ct normalization needs 'window': [lo, hi], got {window!r}; fix the model manifest"
            ) from exc
        if not hi > lo:
            raise ModelPackageError(f"ct window {window!r} is empty; give [lo, hi] with hi > lo in the manifest")
        np.clip(x, lo, hi, out=x)
        x -= lo
        x /= hi - lo
        return x
    if kind == "minmax":
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if hi - lo < _EPS:
            return np.zeros_like(x)
        x -= lo
        x /= hi - lo
        return x
    if kind == "zscore":
        foreground = scheme.get("foreground")
        if foreground not in (None, "otsu"):
            raise ModelPackageError(f"zscore foreground {foreground!r} is unknown; use \"otsu\" or leave it out")
        return _zscore(x, bool(scheme.get("nonzero", False)), scheme.get("clip_percentiles"), foreground == "otsu")
    raise ModelPackageError(
        f"normalization type {kind!r} is unknown; use one of {', '.join(NORMALIZATION_TYPES)} in the manifest"
    )


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape): the cut maximising between-class variance."""
    flat = values.ravel()
    if flat.size > 2_000_000:  # a strided sample gives the same histogram shape, much faster
        flat = flat[:: flat.size // 1_000_000]
    hist, edges = np.histogram(flat, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist).astype(np.float64)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(hist * centers)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centers[int(np.argmax(between))])


def _zscore(x: np.ndarray, nonzero: bool, clip_percentiles: Optional[Sequence[float]],
            otsu_foreground: bool = False) -> np.ndarray:
    """z-score ``x`` (float32, modified in place and returned); see :func:`normalize`."""
    mask = x != 0 if nonzero else None
    values = x[mask] if mask is not None else x.ravel()
    if otsu_foreground and values.size:
        body = values[values > otsu_threshold(values)]
        if body.size >= 0.01 * values.size:  # a degenerate split keeps the plain statistics
            values = body
    if values.size == 0:
        return np.zeros_like(x)
    if clip_percentiles is not None:
        try:
            p_lo, p_hi = (float(p) for p in clip_percentiles)
        except (TypeError, ValueError) as exc:
            raise ModelPackageError(
                f"clip_percentiles {clip_percentiles!r} is invalid; give [low, high] in 0..100 in the manifest"
            ) from exc
        if not 0 <= p_lo <= p_hi <= 100:
            raise ModelPackageError(
                f"clip_percentiles {clip_percentiles!r} is invalid; give [low, high] in 0..100 in the manifest"
            )
        lo, hi = np.percentile(values, [p_lo, p_hi])
        values = np.clip(values, lo, hi)
        np.clip(x, lo, hi, out=x)
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(dtype=np.float64))
    x -= mean
    if std > _EPS:
        x /= std
    else:
        x[...] = 0.0  # constant region: nothing to standardize
    if mask is not None:
        x[~mask] = 0.0
    return x


def denoise(image: sitk.Image, scheme: Optional[dict]) -> sitk.Image:
    """Denoise a 3D image; returns a float32 image on the same grid (``image`` itself if no scheme).

    ``scheme`` is ``None`` / ``{"method": None}`` (no-op) or one of

    - ``{"method": "gaussian", "sigma_mm": 1.0}`` (recursive Gaussian, sigma in mm);
    - ``{"method": "curvature_flow", "timestep": 0.0625, "iterations": 5}``;
    - ``{"method": "nlm", "iterations": 1, "patch_radius": 2, "sample_patches": 50,
      "kernel_sigma": None}`` (ITK patch-based denoising; iterations are capped at
      ``MAX_NLM_ITERATIONS`` so it stays usable; ``kernel_sigma`` defaults to twice the
      estimated noise level). It is slow: about a second per 10^4-10^5 voxels per core.
    """
    if not scheme or not scheme.get("method"):
        return image
    method = str(scheme["method"]).lower()
    source = sitk.Cast(image, sitk.sitkFloat32)
    try:
        if method == "gaussian":
            sigma = float(scheme.get("sigma_mm", 1.0))
            _require_positive("sigma_mm", sigma)
            return sitk.SmoothingRecursiveGaussian(source, sigma)
        if method == "curvature_flow":
            timestep = float(scheme.get("timestep", 0.0625))
            iterations = int(scheme.get("iterations", 5))
            _require_positive("timestep", timestep)
            _require_positive("iterations", iterations)
            smoothed = sitk.CurvatureFlow(source, timeStep=timestep, numberOfIterations=iterations)
            return sitk.Cast(smoothed, sitk.sitkFloat32)  # the filter outputs float64
        if method == "nlm":
            iterations = int(scheme.get("iterations", 1))
            _require_positive("iterations", iterations)
            if iterations > MAX_NLM_ITERATIONS:
                logger.warning("nlm: %d iterations capped at %d", iterations, MAX_NLM_ITERATIONS)
                iterations = MAX_NLM_ITERATIONS
            nlm = sitk.PatchBasedDenoisingImageFilter()
            nlm.SetNumberOfIterations(iterations)
            nlm.SetPatchRadius(int(scheme.get("patch_radius", 2)))
            nlm.SetNumberOfSamplePatches(int(scheme.get("sample_patches", 50)))
            nlm.SetKernelBandwidthEstimation(False)
            # ITK's default kernel bandwidth (400) assumes a fixed intensity scale; tie it
            # to the image's own noise level instead so the filter is scale-independent.
            sigma = scheme.get("kernel_sigma")
            nlm.SetKernelBandwidthSigma(float(sigma) if sigma else 2.0 * estimate_noise_sigma(source))
            if image.GetNumberOfPixels() > 8_000_000:
                logger.warning("nlm denoising of %d voxels may take many minutes", image.GetNumberOfPixels())
            return nlm.Execute(source)
    except (TypeError, ValueError) as exc:
        raise ModelPackageError(f"denoise settings {scheme!r} are invalid ({exc}); fix the model manifest") from exc
    raise ModelPackageError(
        f"denoise method {method!r} is unknown; use one of {', '.join(DENOISE_METHODS)} or null in the manifest"
    )


def estimate_noise_sigma(image: sitk.Image) -> float:
    """Robust Gaussian noise level of an image: MAD of neighbour differences along x.

    Differences of two independent noisy voxels have std ``sqrt(2) * sigma``; the median
    ignores the few large differences at edges. Returns at least a tiny positive number.
    """
    array = sitk.GetArrayViewFromImage(image)
    diff = np.diff(array.astype(np.float32), axis=-1)
    mad = float(np.median(np.abs(diff - np.median(diff)))) if diff.size else 0.0
    return max(1.4826 * mad / np.sqrt(2.0), 1e-6)


def _require_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ModelPackageError(f"denoise {name} must be positive, got {value}; fix the model manifest")


Margin = Union[int, Sequence[int]]


def foreground_bbox(
    array: np.ndarray, margin: Margin = 0, threshold: Optional[float] = None
) -> tuple[slice, slice, slice]:
    """Index slices ``(z, y, x)`` of the box around the foreground, grown by ``margin`` voxels.

    ``array`` is ``(z, y, x)`` or channel-first ``(C, z, y, x)`` (foreground in any channel).
    Foreground is ``array != 0``, or ``array > threshold`` when a threshold is given.
    ``margin`` is one int or ``(z, y, x)`` ints; the box is clipped to the array. No
    foreground gives the whole array.
    """
    if array.ndim not in (3, 4):
        raise ValueError(f"foreground_bbox needs a (z, y, x) or (C, z, y, x) array, got shape {array.shape}")
    mask = array != 0 if threshold is None else array > threshold
    if mask.ndim == 4:
        mask = mask.any(axis=0)
    shape = mask.shape
    if not mask.any():
        return tuple(slice(0, n) for n in shape)  # type: ignore[return-value]
    margins = [int(margin)] * 3 if np.isscalar(margin) else [int(m) for m in margin]  # type: ignore[union-attr,arg-type]
    if len(margins) != 3 or min(margins) < 0:
        raise ValueError(f"margin {margin!r} must be one or three non-negative ints")
    slices = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        lo = max(0, int(present[0]) - margins[axis])
        hi = min(shape[axis], int(present[-1]) + 1 + margins[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)  # type: ignore[return-value]


def crop_to_foreground(
    array: np.ndarray, margin: Margin = 0, threshold: Optional[float] = None
) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """Crop ``(z, y, x)`` or ``(C, z, y, x)`` to its foreground box; returns (cropped copy, box).

    Undo with ``uncrop(cropped, box, array.shape[-3:])``.
    """
    box = foreground_bbox(array, margin, threshold)
    return array[(Ellipsis,) + box].copy(), box


def uncrop(
    cropped: np.ndarray, box: Sequence[slice], shape_zyx: Sequence[int], fill: float = 0
) -> np.ndarray:
    """Inverse of :func:`crop_to_foreground`: place ``cropped`` at ``box`` in an array of the
    full spatial shape ``shape_zyx`` (leading channel axes of ``cropped`` are kept), filled
    with ``fill`` elsewhere. The dtype is ``cropped``'s."""
    full_shape = tuple(cropped.shape[:-3]) + tuple(int(n) for n in shape_zyx)
    out = np.full(full_shape, fill, dtype=cropped.dtype)
    out[(Ellipsis,) + tuple(box)] = cropped
    return out
