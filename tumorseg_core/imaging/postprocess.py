"""Label-map clean-up after inference: small components, largest component, holes.

Label maps are ``uint8`` numpy arrays in SimpleITK order **(z, y, x)**; spacings are
**(x, y, z)** mm as everywhere in the manifest. Connectivity is face (6-) connectivity
for both objects and holes. Rules come from the model manifest, so an invalid rule
raises :class:`~tumorseg_core.errors.ModelPackageError`.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import ModelPackageError

logger = logging.getLogger(__name__)

RULE_KEYS = ("label", "keep_largest", "min_volume_mm3", "fill_holes")


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-connected components of a boolean ``(z, y, x)`` mask.

    Returns ``(components, sizes)``: an int32 array with 0 for background and 1..n for the
    components, and ``sizes[k]`` = voxel count of component k (``sizes[0]`` is background).
    """
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    components = sitk.GetArrayFromImage(sitk.ConnectedComponent(image, False)).astype(np.int32)
    sizes = np.bincount(components.ravel())
    return components, sizes


def remove_small_components(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """``mask`` without the face-connected components of fewer than ``min_voxels`` voxels."""
    components, sizes = connected_components(mask)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[components]


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """``mask`` reduced to its largest face-connected component (first one on ties)."""
    components, sizes = connected_components(mask)
    if sizes.size <= 1:
        return mask.copy()
    return components == int(np.argmax(sizes[1:]) + 1)


def hole_mask(mask: np.ndarray) -> np.ndarray:
    """Voxels of face-connected components of ``~mask`` that do not touch the array border."""
    components, sizes = connected_components(~mask)
    if sizes.size <= 1:
        return np.zeros_like(mask, dtype=bool)
    border = np.zeros(sizes.size, dtype=bool)
    for axis in range(mask.ndim):
        for index in (0, -1):
            border[np.unique(np.take(components, index, axis=axis))] = True
    is_hole = ~border
    is_hole[0] = False
    return is_hole[components]


def mask_bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest index box (slices) holding every True voxel of ``mask``; None if empty."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _validate_rule(rule: dict, n: int) -> tuple[int, bool, float, bool]:
    if not isinstance(rule, dict) or "label" not in rule:
        raise ModelPackageError(f"postprocessing rule {n + 1} ({rule!r}) has no 'label'; fix the model manifest")
    unknown = set(rule) - set(RULE_KEYS)
    if unknown:
        raise ModelPackageError(
            f"postprocessing rule {n + 1} has unknown keys {sorted(unknown)}; allowed: {', '.join(RULE_KEYS)}"
        )
    try:
        label = int(rule["label"])
        min_volume = float(rule.get("min_volume_mm3") or 0.0)
    except (TypeError, ValueError) as exc:
        raise ModelPackageError(f"postprocessing rule {n + 1} ({rule!r}) is invalid; fix the model manifest") from exc
    if not 1 <= label <= 255 or min_volume < 0:
        raise ModelPackageError(
            f"postprocessing rule {n + 1} needs a label in 1..255 and min_volume_mm3 >= 0; fix the model manifest"
        )
    return label, bool(rule.get("keep_largest", False)), min_volume, bool(rule.get("fill_holes", False))


def postprocess_labels(labels: np.ndarray, spacing_xyz: Sequence[float], rules: Sequence[dict]) -> np.ndarray:
    """Apply per-label clean-up rules to a ``(z, y, x)`` uint8 label map; returns a new array.

    Each rule is ``{"label": k, "min_volume_mm3": v, "keep_largest": bool, "fill_holes": bool}``
    and is applied in order, in this order within a rule: components of label ``k`` smaller
    than ``v`` mm³ become background, then (``keep_largest``) only the largest component of
    ``k`` stays, then (``fill_holes``) enclosed background voxels (in 3D, components of
    not-``k`` that do not touch the border) become ``k``. Voxels of other labels are never
    changed, also inside a hole, so nested labels (e.g. a necrotic core) survive.
    Voxel volume is ``prod(spacing_xyz)``.
    """
    out = np.array(labels, dtype=np.uint8, copy=True)
    if out.ndim != 3:
        raise ValueError(f"postprocess_labels needs a (z, y, x) label map, got shape {out.shape}")
    voxel_mm3 = float(np.prod([float(s) for s in spacing_xyz]))
    for n, rule in enumerate(rules or ()):
        label, keep_largest, min_volume, fill_holes = _validate_rule(rule, n)
        box = mask_bbox(out == label)
        if box is None:
            continue
        # Everything a rule changes lies in the label's bounding box: components of the
        # label are inside it, and so is every hole (a background voxel outside the box
        # reaches the array border without crossing the label, and a background
        # component touching the box's faces continues outside it). Working on the box
        # is exact and costs memory in proportion to the tumor, not to the volume.
        crop = out[box]  # a view: the rule edits ``out`` in place
        mask = crop == label
        kept = mask
        if min_volume > 0:
            kept = remove_small_components(kept, min_volume / voxel_mm3)
        if keep_largest and kept.any():
            kept = keep_largest_component(kept)
        removed = mask & ~kept
        crop[removed] = 0
        if fill_holes and kept.any():
            filled = hole_mask(kept) & (crop == 0)
            crop[filled] = label
        else:
            filled = np.zeros(0)
        logger.debug("label %d: removed %d voxels, filled %d", label, int(removed.sum()), int(filled.sum()))
    return out
