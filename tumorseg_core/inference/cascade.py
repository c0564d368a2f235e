"""Coarse-to-fine ROI cascade: full-resolution windows only where a coarse pass sees tumor.

1. The normalized model-grid volume (C, z, y, x) is average-pooled by ``coarse_factor``
   (2-3x the model spacing) and the SAME model runs on it (same window shape, so the
   same warm backend session); that pass costs about 1/factor^3 of the exhaustive one.
2. Candidates: voxels whose foreground probability (max over foreground channels) is
   above ``threshold`` (low, so faint or small lesions are kept), dilated by
   ``margin_mm`` (exact Euclidean distance in mm on the coarse grid).
3. The full-resolution pass places its own windows on the candidates, nnU-Net style
   (:func:`~tumorseg_core.inference.roi_windows.roi_window_starts`): per 26-connected
   candidate component, its bounding box tiled with the fewest windows at the model's
   overlap, usually ONE window per small lesion where the fixed grid would run the 4-8
   grid windows the lesion straddles. They are stitched with the usual Gaussian; every
   candidate voxel is covered, everything else is background. Inside the candidates
   the labels match the exhaustive pass up to the small differences that come from
   seeing a voxel in differently placed windows (identical for a network that looks at
   one voxel at a time). The cascade can lose foreground the coarse pass did not flag.
   No candidate at all returns an empty label map without any full-resolution window.

``cascade=False`` (API) / ``--no-cascade`` (CLI) is the exhaustive pass. With the
package's own network the cascade is opt-in (:data:`DEFAULT_CASCADE` is False: the
shipped model loses small lesions at the coarse scale, see benchmarks/README.md); a
package with a dedicated coarse network (manifest ``cascade``, see
:mod:`tumorseg_core.modelpkg.manifest`) sets its own default, factor, threshold and margin.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from tumorseg_core.inference.roi_windows import roi_window_starts
from tumorseg_core.inference.uncertainty import entropy_from_sums

logger = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]

DEFAULT_CASCADE = False
COARSE_FACTOR = 2.0
THRESHOLD = 0.1
MARGIN_MM = 10.0
# Share of the progress bar given to the coarse pass.
_COARSE_SHARE = 0.15


def predict_labels(
    predictor: Any,
    volume: np.ndarray,
    spacing_xyz: Sequence[float],
    cascade: bool | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    coarse_predictor: Any = None,
    spec: Any = None,
) -> np.ndarray:
    """Labels (z, y, x) uint8 for a (C, z, y, x) volume: cascade or exhaustive windows.

    ``spec`` is the package's :class:`~tumorseg_core.modelpkg.manifest.CascadeSpec` (its
    dedicated coarse network runs as ``coarse_predictor``); ``cascade=None`` uses its
    ``default``, or :data:`DEFAULT_CASCADE` without one. ``spacing_xyz`` is the model
    grid's spacing in mm (x, y, z), used for the margin.
    """
    return _predict(predictor, volume, spacing_xyz, cascade, progress, cancel, coarse_predictor, spec, False)[0]


def predict_labels_and_uncertainty(
    predictor: Any,
    volume: np.ndarray,
    spacing_xyz: Sequence[float],
    cascade: bool | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    coarse_predictor: Any = None,
    spec: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`predict_labels`'s labels (bit-identical) and the uncertainty (z, y, x) float32 in [0, 1].

    The normalised predictive entropy of the full-resolution pass's mean probabilities
    (:meth:`Predictor.predict_with_uncertainty`); with the cascade, voxels outside the
    candidate region (never seen at full resolution) get the coarse pass's entropy,
    nearest neighbour from the coarse grid.
    """
    labels, uncertainty = _predict(predictor, volume, spacing_xyz, cascade, progress, cancel, coarse_predictor,
                                   spec, True)
    assert uncertainty is not None
    return labels, uncertainty


def _predict(predictor: Any, volume: np.ndarray, spacing_xyz: Sequence[float], cascade: bool | None,
             progress: ProgressFn | None, cancel: CancelFn | None, coarse_predictor: Any, spec: Any,
             uncertainty: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Cascade or exhaustive labels, with the uncertainty map when asked (else None)."""
    if cascade_enabled(cascade, spec):
        settings = {} if spec is None else {
            "coarse_factor": spec.factor, "threshold": spec.threshold, "margin_mm": spec.margin_mm,
            "input_clip": spec.input_clip}
        return _cascade(predictor, volume, spacing_xyz, progress=progress, cancel=cancel,
                        coarse_predictor=coarse_predictor, uncertainty=uncertainty, **settings)
    if uncertainty:
        return predictor.predict_with_uncertainty(volume, progress=progress, cancel=cancel)
    return predictor.predict(volume, progress=progress, cancel=cancel), None


def cascade_enabled(cascade: bool | None, spec: Any = None) -> bool:
    """Whether to run the cascade: the caller's choice, else the package's ``cascade``
    section's ``default``, else :data:`DEFAULT_CASCADE`."""
    if cascade is not None:
        return bool(cascade)
    return spec.default if spec is not None else DEFAULT_CASCADE


def area_pool(volume: np.ndarray, shape_zyx: Sequence[int]) -> np.ndarray:
    """(C, z, y, x) float32 averaged onto ``shape_zyx`` like torch's ``interpolate(mode="area")``.

    Output voxel i of an axis of n -> c voxels averages input voxels
    floor(i * n / c) .. ceil((i + 1) * n / c) - 1 (adaptive average pooling); a box
    average is the product of per-axis averages, so it runs one small matrix per axis
    (no torch import on the CPU path).
    """
    out = np.ascontiguousarray(volume, dtype=np.float32)
    for axis, c in enumerate(shape_zyx, start=1):
        n = out.shape[axis]
        if n == c:
            continue
        weights = np.zeros((c, n), dtype=np.float32)
        for i in range(c):
            lo, hi = (i * n) // c, -((-(i + 1) * n) // c)
            weights[i, lo:hi] = 1.0 / (hi - lo)
        out = np.moveaxis(np.tensordot(weights, np.moveaxis(out, axis, 0), axes=1), 0, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def coarse_shape(shape_zyx: Sequence[int], patch_zyx: Sequence[int], factor: float) -> tuple[int, int, int]:
    """Coarse grid size: each axis divided by ``factor``; axes with a 1-voxel window kept."""
    return tuple(  # type: ignore[return-value]
        int(n) if p == 1 else max(1, int(round(n / factor))) for n, p in zip(shape_zyx, patch_zyx)
    )


def candidate_region(
    probabilities: np.ndarray,
    full_shape_zyx: Sequence[int],
    coarse_spacing_xyz: Sequence[float],
    threshold: float = THRESHOLD,
    margin_mm: float = MARGIN_MM,
) -> np.ndarray:
    """Full-grid (z, y, x) bool mask of candidates from coarse (K, cz, cy, cx) probabilities.

    Thresholds the max over channels, dilates by ``margin_mm`` on the coarse grid
    (spacing ``coarse_spacing_xyz``, x-y-z mm) and maps it to ``full_shape_zyx`` by
    nearest neighbour (full voxel j lies in coarse voxel floor(j * c / n)).
    """
    seeds = probabilities.max(axis=0) > threshold
    if not seeds.any():
        return np.zeros(tuple(full_shape_zyx), dtype=bool)
    if margin_mm > 0:
        image = sitk.GetImageFromArray(seeds.astype(np.uint8))
        image.SetSpacing([float(s) for s in coarse_spacing_xyz])
        distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                                useImageSpacing=True)
        seeds = sitk.GetArrayViewFromImage(distance) <= margin_mm
    return _nearest_to(seeds, full_shape_zyx)


def predict_cascade(
    predictor: Any,
    volume: np.ndarray,
    spacing_xyz: Sequence[float],
    coarse_factor: float = COARSE_FACTOR,
    threshold: float = THRESHOLD,
    margin_mm: float = MARGIN_MM,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    coarse_predictor: Any = None,
    input_clip: Sequence[float] | None = None,
) -> np.ndarray:
    """Labels (z, y, x) uint8 for a (C, z, y, x) float32 volume via the ROI cascade.

    Args:
        predictor: a :class:`~tumorseg_core.inference.predictor.Predictor`.
        volume: normalized input on the model grid, (C, z, y, x).
        spacing_xyz: model grid spacing, mm (x, y, z).
        coarse_factor: coarse spacing / model spacing (> 1).
        threshold: foreground probability that makes a coarse voxel a candidate.
        margin_mm: dilation of the candidates, mm.
        coarse_predictor: runs the coarse pass (a dedicated coarse network); None: ``predictor``.
        input_clip: ``(low, high)`` the pooled volume is clipped to before the coarse pass
            (what the dedicated coarse network was trained on), or None.
    """
    return _cascade(predictor, volume, spacing_xyz, coarse_factor, threshold, margin_mm, progress, cancel,
                    coarse_predictor, input_clip, uncertainty=False)[0]


def _nearest_to(coarse: np.ndarray, full_shape_zyx: Sequence[int]) -> np.ndarray:
    """A coarse (cz, cy, cx) map on the full grid: full voxel j takes coarse voxel floor(j * c / n)."""
    index = [np.minimum(np.arange(n) * c // n, c - 1) for n, c in zip(full_shape_zyx, coarse.shape)]
    return coarse[np.ix_(*index)]


def _cascade(
    predictor: Any,
    volume: np.ndarray,
    spacing_xyz: Sequence[float],
    coarse_factor: float = COARSE_FACTOR,
    threshold: float = THRESHOLD,
    margin_mm: float = MARGIN_MM,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    coarse_predictor: Any = None,
    input_clip: Sequence[float] | None = None,
    uncertainty: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`predict_cascade`, with the uncertainty map when asked (else None)."""
    if coarse_factor <= 1:
        raise ValueError(f"coarse_factor must be > 1, got {coarse_factor}")
    full = tuple(int(n) for n in volume.shape[1:])
    coarse_net = predictor if coarse_predictor is None else coarse_predictor
    small = coarse_shape(full, coarse_net.patch_size_zyx, coarse_factor)
    if small == full:
        if uncertainty:
            return predictor.predict_with_uncertainty(volume, progress=progress, cancel=cancel)
        return predictor.predict(volume, progress=progress, cancel=cancel), None
    coarse = area_pool(volume, small)
    if input_clip is not None:
        np.clip(coarse, float(input_clip[0]), float(input_clip[1]), out=coarse)
    sub = None if progress is None else (lambda f, m: progress(_COARSE_SHARE * f, f"coarse pass: {m}"))
    probabilities = coarse_net.predict_probabilities(coarse, progress=sub, cancel=cancel)
    del coarse
    coarse_spacing = [s * n / c for s, n, c in zip(spacing_xyz, full[::-1], small[::-1])]
    region = candidate_region(probabilities, full, coarse_spacing, threshold, margin_mm)
    coarse_entropy = None
    if uncertainty:
        coarse_entropy = _nearest_to(
            entropy_from_sums(probabilities, 1.0, coarse_net.output_type, coarse_net.num_outputs), full)
    del probabilities
    fraction = float(region.mean())
    logger.info("cascade: coarse grid %s, candidates cover %.1f%% of the volume", small, 100 * fraction)
    if fraction == 0.0:
        if progress is not None:
            progress(1.0, "no candidate region: empty result")
        return np.zeros(full, dtype=np.uint8), coarse_entropy
    starts = roi_window_starts(region, predictor.patch_size_zyx, predictor.overlap)
    logger.info("cascade: %d full-resolution window(s)", len(starts))
    fine = None if progress is None else (
        lambda f, m: progress(_COARSE_SHARE + (1 - _COARSE_SHARE) * f, m))
    if not uncertainty:
        return predictor.predict(volume, progress=fine, cancel=cancel, region=region, starts=starts), None
    labels, entropy = predictor.predict_with_uncertainty(volume, progress=fine, cancel=cancel, region=region,
                                                         starts=starts)
    entropy[~region] = coarse_entropy[~region]  # type: ignore[index]
    return labels, entropy
