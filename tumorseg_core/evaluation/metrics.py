"""Segmentation metrics on boolean masks (numpy/scipy only, no torch: evaluation stays cheap).

Every function takes masks as arrays of shape (z, y, x) (SimpleITK array order; any
non-zero value counts as inside) and, where distances or volumes matter, the voxel
spacing in millimetres in ITK order ``spacing_xyz = (x, y, z)``.

Definitions
-----------
* TP, FP, FN, TN are voxel counts. ``dice = 2TP / (2TP + FP + FN)``;
  ``sensitivity = TP / (TP + FN)``; ``specificity = TN / (TN + FP)``;
  ``precision = TP / (TP + FP)``.
* **Surface voxels** of a mask: mask voxels with at least one 6-connected neighbour
  outside the mask (``mask & ~binary_erosion(mask)`` with a 6-connected structuring
  element; outside the image counts as background, so a mask cut by the field of view
  has a surface there). Distances are Euclidean in millimetres between voxel centres
  (``scipy.ndimage.distance_transform_edt`` with ``sampling = spacing_zyx``).
* **hd95**: let ``d(P->T)`` be, for every surface voxel of P, the distance to the
  nearest surface voxel of T, and ``d(T->P)`` the same the other way. hd95 is the
  95th percentile (numpy's default linear interpolation) of the **pooled** list
  ``d(P->T) + d(T->P)``.
* **surface_dice** at tolerance tau (mm): ``(#{p in S_P: d(p, S_T) <= tau} +
  #{t in S_T: d(t, S_P) <= tau}) / (|S_P| + |S_T|)``, counting surface voxels (not
  surface-element areas).
* **volume_error**: ``|V_pred - V_truth|`` in mm³ and ``|V_pred - V_truth| / V_truth``.
* **lesion_detection**: lesions are connected components with **26-connectivity**
  (face, edge or corner neighbours; ``connectivity=6`` is available). A truth lesion
  is *found* when the prediction covers at least one of its voxels and at least the
  fraction ``min_overlap`` of its voxels; otherwise it is *missed*. A predicted
  component touching no truth voxel at all is a *false positive*. Components smaller
  than ``min_volume_mm3`` are ignored on both sides.

Empty-mask policy
-----------------
A ratio whose denominator is zero is **undefined and returned as NaN**; summaries use
NaN-aware means and report how many cases each mean excludes. The exceptions are the
overlap and distance scores, where "both empty" means perfect agreement:

    metric              both empty   truth empty, pred not   pred empty, truth not
    dice                1            0                       0
    surface_dice        1            0                       0
    hd95 (mm)           0            NaN                     NaN
    sensitivity         NaN          NaN                     0
    precision           NaN          0                       NaN
    specificity         1            TN / (TN + FP)          1
    volume error mm3    0            V_pred                  V_truth
    volume error rel    NaN          NaN                     1
    lesions             0 / 0 / 0    FP = pred lesions       missed = truth lesions

(specificity is NaN only when the truth covers every voxel.)

hd95 is NaN rather than a penalty distance (such as the image diagonal) so that it
does not depend on the field of view; the misses it leaves out show up in Dice,
sensitivity and the lesion counts, and in the "excluded" count of the summary.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from tumorseg_core.errors import InputError

logger = logging.getLogger(__name__)

NAN = float("nan")

# Per-label keys evaluate_case returns, in table/CSV order.
METRIC_KEYS: tuple[str, ...] = (
    "dice", "sensitivity", "specificity", "precision", "hd95", "surface_dice",
    "volume_pred_mm3", "volume_truth_mm3", "volume_error_mm3", "volume_error_rel",
)
LESION_KEYS: tuple[str, ...] = ("lesions_truth", "lesions_found", "lesions_missed", "lesions_fp")
# Truth lesions by equivalent-sphere diameter (mm): small lesions are the ones models miss.
DIAMETER_BINS_MM: tuple[float, ...] = (10.0, 20.0)


def diameter_bin_names(bins_mm: Sequence[float] = DIAMETER_BINS_MM) -> list[str]:
    """Names of the diameter bins in lesion keys: ``lt10mm``, ``10to20mm``, ``ge20mm``."""
    edges = [f"{b:g}" for b in bins_mm]
    return [f"lt{edges[0]}mm"] + [f"{a}to{b}mm" for a, b in zip(edges, edges[1:])] + [f"ge{edges[-1]}mm"]


LESION_SIZE_KEYS: tuple[str, ...] = tuple(
    f"lesions_{kind}_{name}" for name in diameter_bin_names() for kind in ("truth", "found")
)


def _masks(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays of the same shape, or InputError."""
    pred = np.asarray(pred) != 0
    truth = np.asarray(truth) != 0
    if pred.shape != truth.shape:
        raise InputError(
            f"prediction shape {pred.shape} differs from truth shape {truth.shape} (z, y, x); "
            "resample the prediction onto the truth grid"
        )
    return pred, truth


def _spacing_zyx(spacing_xyz: Sequence[float], ndim: int) -> tuple[float, ...]:
    """Spacing reversed to array order, checked: one positive finite number per axis."""
    spacing = tuple(float(s) for s in spacing_xyz)
    if len(spacing) != ndim or any(not math.isfinite(s) or s <= 0 for s in spacing):
        raise InputError(f"spacing {spacing_xyz} must be {ndim} positive numbers in x, y, z order")
    return spacing[::-1]


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when den is 0 (the undefined case of the empty-mask policy)."""
    return float(num) / float(den) if den else NAN


def confusion(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """Voxel counts (TP, FP, FN, TN) of two masks (z, y, x)."""
    pred, truth = _masks(pred, truth)
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    tn = int(pred.size) - tp - fp - fn
    return tp, fp, fn, tn


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap 2TP / (2TP + FP + FN) of masks (z, y, x); 1.0 when both are empty."""
    tp, fp, fn, _ = confusion(pred, truth)
    den = 2 * tp + fp + fn
    return 2.0 * tp / den if den else 1.0


def sensitivity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Recall TP / (TP + FN) of masks (z, y, x); NaN when the truth is empty."""
    tp, _, fn, _ = confusion(pred, truth)
    return _ratio(tp, tp + fn)


def specificity(pred: np.ndarray, truth: np.ndarray) -> float:
    """TN / (TN + FP) of masks (z, y, x); NaN when the truth covers every voxel."""
    _, fp, _, tn = confusion(pred, truth)
    return _ratio(tn, tn + fp)


def precision(pred: np.ndarray, truth: np.ndarray) -> float:
    """Positive predictive value TP / (TP + FP) of masks (z, y, x); NaN when pred is empty."""
    tp, fp, _, _ = confusion(pred, truth)
    return _ratio(tp, tp + fp)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels (bool, same shape): mask voxels with a 6-neighbour outside the mask."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing_xyz: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (d(P->T) per pred surface voxel, d(T->P) per truth one).

    Both masks must be non-empty (check first); see the module docstring for the definition.
    """
    pred, truth = _masks(pred, truth)
    sampling = _spacing_zyx(spacing_xyz, pred.ndim)
    if not pred.any() or not truth.any():
        raise ValueError("surface_distances needs two non-empty masks")
    # Crop to the bounding box of both masks plus one voxel: every surface voxel and every
    # feature voxel of the distance transforms lies inside it, so distances are unchanged.
    coords = np.argwhere(pred | truth)
    lo = np.maximum(coords.min(axis=0) - 1, 0)
    hi = np.minimum(coords.max(axis=0) + 2, pred.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    surf_p, surf_t = _surface(pred[box]), _surface(truth[box])
    # distance_transform_edt measures to the nearest zero, so invert the target surface.
    dist_to_t = ndimage.distance_transform_edt(~surf_t, sampling=sampling)
    dist_to_p = ndimage.distance_transform_edt(~surf_p, sampling=sampling)
    return dist_to_t[surf_p], dist_to_p[surf_t]


def hd95(pred: np.ndarray, truth: np.ndarray, spacing_xyz: Sequence[float]) -> float:
    """95th percentile (mm) of the pooled symmetric surface distances of masks (z, y, x).

    0.0 when both masks are empty, NaN when exactly one is empty.
    """
    pred, truth = _masks(pred, truth)
    _spacing_zyx(spacing_xyz, pred.ndim)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return NAN
    d_pt, d_tp = surface_distances(pred, truth, spacing_xyz)
    return float(np.percentile(np.concatenate([d_pt, d_tp]), 95))


def surface_dice(
    pred: np.ndarray, truth: np.ndarray, spacing_xyz: Sequence[float], tolerance_mm: float = 2.0
) -> float:
    """Fraction of both surfaces within ``tolerance_mm`` (inclusive) of the other; masks (z, y, x).

    1.0 when both masks are empty, 0.0 when exactly one is.
    """
    pred, truth = _masks(pred, truth)
    _spacing_zyx(spacing_xyz, pred.ndim)
    if not math.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise InputError(f"tolerance {tolerance_mm} mm must be a number >= 0")
    if not pred.any() and not truth.any():
        return 1.0
    if not pred.any() or not truth.any():
        return 0.0
    d_pt, d_tp = surface_distances(pred, truth, spacing_xyz)
    # A tiny slack so a distance of exactly tau (e.g. 3 * 1.0000001 mm spacing) counts.
    tol = tolerance_mm + 1e-6
    close = int(np.count_nonzero(d_pt <= tol)) + int(np.count_nonzero(d_tp <= tol))
    return close / float(d_pt.size + d_tp.size)


def volume_error(
    pred: np.ndarray, truth: np.ndarray, spacing_xyz: Sequence[float]
) -> tuple[float, float]:
    """(|V_pred - V_truth| in mm³, the same relative to V_truth) for masks (z, y, x).

    The relative error is NaN when the truth is empty.
    """
    pred, truth = _masks(pred, truth)
    voxel_mm3 = float(np.prod(_spacing_zyx(spacing_xyz, pred.ndim)))
    v_pred = np.count_nonzero(pred) * voxel_mm3
    v_truth = np.count_nonzero(truth) * voxel_mm3
    absolute = abs(v_pred - v_truth)
    return absolute, _ratio(absolute, v_truth)


def _components(mask: np.ndarray, connectivity: int, min_voxels: float) -> tuple[np.ndarray, list[int]]:
    """Label image of ``mask`` and the ids of components with at least ``min_voxels`` voxels."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1 if connectivity == 6 else mask.ndim)
    labels, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return labels, []
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    return labels, [i for i in range(1, count + 1) if sizes[i] >= min_voxels]


def lesion_detection(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing_xyz: Sequence[float],
    min_overlap: float = 0.0,
    connectivity: int = 26,
    min_volume_mm3: float = 0.0,
    by_diameter: bool = False,
) -> dict[str, int]:
    """Lesion-wise detection counts for masks (z, y, x).

    Args:
        min_overlap: fraction of a truth lesion's voxels the prediction must cover for
            it to count as found (0: any overlapping voxel).
        connectivity: 26 (default) or 6 neighbours define a connected lesion.
        min_volume_mm3: components smaller than this (pred and truth) are ignored.
        by_diameter: also count truth and found lesions per diameter bin
            (:data:`LESION_SIZE_KEYS`; diameter of the sphere of the lesion's volume,
            bins :data:`DIAMETER_BINS_MM`).

    Returns:
        ``{"lesions_truth", "lesions_found", "lesions_missed", "lesions_fp"}`` counts
        (plus the :data:`LESION_SIZE_KEYS` with ``by_diameter``).
    """
    pred, truth = _masks(pred, truth)
    spacing = _spacing_zyx(spacing_xyz, pred.ndim)
    if connectivity not in (6, 26):
        raise InputError(f"connectivity must be 6 or 26, got {connectivity}")
    if not 0.0 <= min_overlap <= 1.0:
        raise InputError(f"min_overlap must be a fraction between 0 and 1, got {min_overlap}")
    min_voxels = max(float(min_volume_mm3) / float(np.prod(spacing)), 1.0)

    pred_labels, pred_ids = _components(pred, connectivity, min_voxels)
    pred_kept = np.isin(pred_labels, pred_ids)  # ignored specks neither detect nor count as FP
    truth_labels, truth_ids = _components(truth, connectivity, min_voxels)
    found_ids: list[int] = []
    sizes = np.bincount(truth_labels.ravel()) if truth_ids else np.zeros(1, dtype=np.int64)
    if truth_ids:
        covered = np.bincount(truth_labels[pred_kept], minlength=sizes.size)
        found_ids = [i for i in truth_ids if covered[i] > 0 and covered[i] >= min_overlap * sizes[i]]
    touching = set(np.unique(pred_labels[truth]).tolist())
    false_pos = sum(1 for i in pred_ids if i not in touching)
    counts = {
        "lesions_truth": len(truth_ids),
        "lesions_found": len(found_ids),
        "lesions_missed": len(truth_ids) - len(found_ids),
        "lesions_fp": false_pos,
    }
    if by_diameter:
        voxel_mm3 = float(np.prod(spacing))
        diameters = {i: 2.0 * (3.0 * sizes[i] * voxel_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0) for i in truth_ids}
        which = {i: int(np.searchsorted(DIAMETER_BINS_MM, d, side="right")) for i, d in diameters.items()}
        for b, name in enumerate(diameter_bin_names()):
            counts[f"lesions_truth_{name}"] = sum(1 for i in truth_ids if which[i] == b)
            counts[f"lesions_found_{name}"] = sum(1 for i in found_ids if which[i] == b)
    return counts


def lesion_count(mask: np.ndarray, connectivity: int = 26) -> int:
    """Number of lesions (connected components, 26- or 6-connected) of a mask (z, y, x)."""
    if connectivity not in (6, 26):
        raise InputError(f"connectivity must be 6 or 26, got {connectivity}")
    return len(_components(np.asarray(mask) != 0, connectivity, 1.0)[1])


def lesion_records(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing_xyz: Sequence[float],
    min_overlap: float = 0.0,
    connectivity: int = 26,
) -> list[dict[str, Any]]:
    """Every lesion of one label, one record each: the truth lesions, then the false positives.

    The same lesions and the same rule as :func:`lesion_detection` (so the records'
    statuses add up to its counts): a truth lesion is ``found`` when the prediction
    covers at least one of its voxels and the fraction ``min_overlap``, else ``missed``;
    a predicted component touching no truth voxel is a ``false positive``.

    Args:
        pred, truth: masks (z, y, x); spacing_xyz: voxel spacing in mm, x, y, z.

    Returns:
        Dicts with ``kind`` (``"truth"`` or ``"prediction"``), ``status`` (``found``,
        ``missed``, ``false positive``), ``volume_mm3``, ``covered`` (fraction of a
        truth lesion's voxels the prediction covers; 0 for a false positive) and
        ``center_index_zyx`` (the lesion's centroid as a continuous voxel index
        (z, y, x)). Truth lesions come first, each group ordered by its first voxel
        in (z, y, x) order.
    """
    pred, truth = _masks(pred, truth)
    spacing = _spacing_zyx(spacing_xyz, pred.ndim)
    if connectivity not in (6, 26):
        raise InputError(f"connectivity must be 6 or 26, got {connectivity}")
    if not 0.0 <= min_overlap <= 1.0:
        raise InputError(f"min_overlap must be a fraction between 0 and 1, got {min_overlap}")
    voxel_mm3 = float(np.prod(spacing))
    records: list[dict[str, Any]] = []
    truth_labels, truth_ids = _components(truth, connectivity, 1.0)
    if truth_ids:
        sizes = np.bincount(truth_labels.ravel())
        covered = np.bincount(truth_labels[pred], minlength=sizes.size)
        centers = ndimage.center_of_mass(truth, truth_labels, truth_ids)
        for i, center in zip(truth_ids, centers):
            found = covered[i] > 0 and covered[i] >= min_overlap * sizes[i]
            records.append({"kind": "truth", "status": "found" if found else "missed",
                            "volume_mm3": float(sizes[i]) * voxel_mm3, "covered": float(covered[i] / sizes[i]),
                            "center_index_zyx": tuple(float(c) for c in center)})
    pred_labels, pred_ids = _components(pred, connectivity, 1.0)
    touching = set(np.unique(pred_labels[truth]).tolist())
    false_pos = [i for i in pred_ids if i not in touching]
    if false_pos:
        sizes = np.bincount(pred_labels.ravel())
        centers = ndimage.center_of_mass(pred, pred_labels, false_pos)
        for i, center in zip(false_pos, centers):
            records.append({"kind": "prediction", "status": "false positive",
                            "volume_mm3": float(sizes[i]) * voxel_mm3, "covered": 0.0,
                            "center_index_zyx": tuple(float(c) for c in center)})
    return records


def evaluate_case(
    pred_labels: np.ndarray,
    truth_labels: np.ndarray,
    spacing_xyz: Sequence[float],
    labels: Mapping[int, str] | None = None,
    tolerance_mm: float = 2.0,
    min_overlap: float = 0.0,
) -> list[dict[str, Any]]:
    """All metrics for each label of one case.

    Args:
        pred_labels, truth_labels: integer label maps (z, y, x) on the same grid.
        spacing_xyz: voxel spacing in mm, x, y, z.
        labels: label value -> name; None: every non-zero value in either map,
            named ``label_<value>``.
        tolerance_mm: surface Dice tolerance.
        min_overlap: lesion detection threshold (see :func:`lesion_detection`).

    Returns:
        One dict per label: ``label``, ``name``, every key of ``METRIC_KEYS``,
        ``LESION_KEYS`` and ``LESION_SIZE_KEYS`` (floats, NaN where undefined; lesion
        counts as ints).
    """
    pred_labels = np.asarray(pred_labels)
    truth_labels = np.asarray(truth_labels)
    _masks(pred_labels, truth_labels)
    spacing = _spacing_zyx(spacing_xyz, pred_labels.ndim)
    if not math.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise InputError(f"tolerance {tolerance_mm} mm must be a number >= 0")
    if labels is None:
        values = np.union1d(np.unique(pred_labels), np.unique(truth_labels))
        labels = {int(v): f"label_{int(v)}" for v in values if v != 0}
    rows: list[dict[str, Any]] = []
    for value, name in sorted(labels.items()):
        row: dict[str, Any] = {"label": int(value), "name": str(name)}
        row.update(_label_metrics(pred_labels == value, truth_labels == value, spacing, tolerance_mm))
        row.update(lesion_detection(pred_labels == value, truth_labels == value, spacing_xyz,
                                    min_overlap=min_overlap, by_diameter=True))
        rows.append(row)
    return rows


def _label_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing_zyx: tuple[float, ...], tolerance_mm: float
) -> dict[str, float]:
    """The METRIC_KEYS of one label (bool masks (z, y, x)); counts and distances computed once.

    Same values and empty-mask policy as the single-metric functions above.
    """
    spacing_xyz = spacing_zyx[::-1]
    tp, fp, fn, tn = confusion(pred, truth)
    voxel_mm3 = float(np.prod(spacing_zyx))
    v_pred, v_truth = (tp + fp) * voxel_mm3, (tp + fn) * voxel_mm3
    out = {
        "dice": 2.0 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
    }
    if tp + fp == 0 and tp + fn == 0:
        out.update(hd95=0.0, surface_dice=1.0)
    elif tp + fp == 0 or tp + fn == 0:
        out.update(hd95=NAN, surface_dice=0.0)
    else:
        d_pt, d_tp = surface_distances(pred, truth, spacing_xyz)
        tol = tolerance_mm + 1e-6
        out["hd95"] = float(np.percentile(np.concatenate([d_pt, d_tp]), 95))
        out["surface_dice"] = (np.count_nonzero(d_pt <= tol) + np.count_nonzero(d_tp <= tol)) / float(
            d_pt.size + d_tp.size
        )
    out.update(
        volume_pred_mm3=v_pred,
        volume_truth_mm3=v_truth,
        volume_error_mm3=abs(v_pred - v_truth),
        volume_error_rel=_ratio(abs(v_pred - v_truth), v_truth),
    )
    return out
