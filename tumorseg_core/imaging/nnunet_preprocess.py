"""nnU-Net v2's preprocessing and export, step by step, as small pure numpy/scipy functions.

A package with an ``nnunet`` manifest section (an imported nnU-Net v2 model) runs the
pipeline nnU-Net's own predictor runs, in nnU-Net's voxel space (direction is ignored, as
nnU-Net ignores it; the result lands on the input's exact grid):

    transpose_forward -> crop to the non-zero region (holes filled) -> normalize per channel
    (before resampling) -> resample to the plan's spacing (:func:`resample_to_shape`)
    ... network windows (``inference/nnunet_windows.py``) ...
    logits resampled back (order 1) -> softmax / sigmoid -> labels -> un-crop -> transpose_backward

The arithmetic follows nnunetv2 2.x (``DefaultPreprocessor.run_case_npy``,
``default_resampling.py``, ``default_normalization_schemes.py``, ``export_prediction.py``;
Apache-2.0) so that probabilities agree to float rounding: the same float32/float64/float16
steps in the same order. ``skimage.transform.resize`` (mode ``edge``, no anti-aliasing),
which nnU-Net calls, is reproduced with ``scipy.ndimage.zoom(grid_mode=True)`` plus its
clipping to the input range (:func:`skimage_resize`). numpy and scipy only: no torch.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

#: nnU-Net's ``ANISO_THRESHOLD``: spacing max/min above this resamples the low-resolution axis separately.
ANISOTROPY_THRESHOLD = 3.0
#: The normalization schemes reproduced here (nnU-Net's class names, as plans.json spells them).
NORMALIZATION_SCHEMES = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization",
                         "RGBTo01Normalization")

BBox = List[List[int]]


# --------------------------------------------------------------------- cropping

def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Voxels where any channel is non-zero, holes filled (``create_nonzero_mask``)."""
    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    return ndimage.binary_fill_holes(mask)


def bbox_of(mask: np.ndarray) -> BBox:
    """Half-open [start, end) per axis of the mask's True voxels; the whole array if there are none."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1] if hits.size else [0, mask.shape[axis]])
    return box


def crop_to_nonzero(data: np.ndarray) -> Tuple[np.ndarray, np.ndarray, BBox]:
    """``(cropped data, seg (int8: 0 inside the non-zero mask, -1 outside), bbox)`` like ``crop_to_nonzero``."""
    mask = nonzero_mask(data)
    bbox = bbox_of(mask)
    slicer = tuple(slice(lo, hi) for lo, hi in bbox)
    seg = np.where(mask[slicer][None], np.int8(0), np.int8(-1))
    return data[(slice(None), *slicer)], seg, bbox


def insert_crop(full: np.ndarray, crop: np.ndarray, bbox: BBox) -> np.ndarray:
    """Put ``crop`` back at ``bbox`` of ``full`` (its trailing axes); returns ``full``."""
    lead = full.ndim - len(bbox)
    full[(slice(None),) * lead + tuple(slice(lo, hi) for lo, hi in bbox)] = crop
    return full


# ----------------------------------------------------------------- normalization

def normalize_channel(image: np.ndarray, seg: np.ndarray, scheme: Dict[str, Any]) -> np.ndarray:
    """One channel, float32, by an nnU-Net scheme ``{"scheme", "use_mask_for_norm", "intensity_properties"}``."""
    name = scheme["scheme"]
    props = scheme.get("intensity_properties") or {}
    eps = 1e-8
    image = image.astype(np.float32, copy=False)
    if name == "ZScoreNormalization":
        if scheme.get("use_mask_for_norm"):
            mask = seg >= 0
            mean = image[mask].mean()
            std = image[mask].std()
            image[mask] = (image[mask] - mean) / (max(std, eps))
        else:
            mean = image.mean()
            std = image.std()
            image -= mean
            image /= max(std, eps)
    elif name == "CTNormalization":
        np.clip(image, props["percentile_00_5"], props["percentile_99_5"], out=image)
        image -= props["mean"]
        image /= max(props["std"], eps)
    elif name == "RescaleTo01Normalization":
        image -= image.min()
        image /= np.clip(image.max(), a_min=eps, a_max=None)
    elif name == "RGBTo01Normalization":
        image /= 255.0
    elif name != "NoNormalization":
        raise ValueError(f"unknown nnU-Net normalization {name!r}")
    return image


def normalize(data: np.ndarray, seg: np.ndarray, schemes: Sequence[Dict[str, Any]]) -> np.ndarray:
    """Every channel of (C, ...) float32 ``data`` in place by its scheme (``DefaultPreprocessor._normalize``)."""
    for c, scheme in enumerate(schemes):
        data[c] = normalize_channel(data[c], seg[0], scheme)
    return data


# ------------------------------------------------------------------- resampling

def compute_new_shape(old_shape: Sequence[int], old_spacing: Sequence[float], new_spacing: Sequence[float]) -> np.ndarray:
    return np.array([int(round(i / j * k)) for i, j, k in zip(old_spacing, new_spacing, old_shape)])


def _lowres_axis(spacing: Sequence[float]) -> np.ndarray:
    return np.where(max(spacing) / np.array(spacing) == 1)[0]


def separate_z(force: Optional[bool], current: Sequence[float], new: Sequence[float],
               threshold: float = ANISOTROPY_THRESHOLD) -> Tuple[bool, Optional[int]]:
    """Whether to resample the low-resolution axis on its own, and which (``determine_do_sep_z_and_axis``)."""
    if force is not None:
        do, axis = bool(force), (_lowres_axis(current) if force else None)
    elif (np.max(current) / np.min(current)) > threshold:
        do, axis = True, _lowres_axis(current)
    elif (np.max(new) / np.min(new)) > threshold:
        do, axis = True, _lowres_axis(new)
    else:
        do, axis = False, None
    if axis is not None:
        if len(axis) != 1:  # 2 or 3 equally coarse axes: no separate axis
            return False, None
        return do, int(axis[0])
    return do, None


def skimage_resize(image: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``skimage.transform.resize(image, shape, order, mode="edge", anti_aliasing=False)`` for float64 ``image``."""
    factors = np.divide(image.shape, shape)
    zoom = [1 / f for f in factors]
    if order == 0:
        out = ndimage.zoom(image, zoom, order=0, mode="nearest", grid_mode=True)
    else:
        out = ndimage.zoom(image, zoom, order=order, mode="nearest", grid_mode=True)
    np.clip(out, np.asarray(np.min(image)), np.asarray(np.max(image)), out=out)
    return out


def resample(data: np.ndarray, new_shape: Sequence[int], axis: Optional[int], order: int, do_separate_z: bool,
             order_z: int = 0) -> np.ndarray:
    """nnU-Net's ``resample_data_or_seg`` for images and probabilities (not label maps); keeps ``data.dtype``."""
    shape = np.array(data[0].shape)
    new_shape = np.array(new_shape)
    dtype_out = data.dtype
    if not np.any(shape != new_shape):
        return data
    out = np.zeros((data.shape[0], *new_shape), dtype=dtype_out)
    data = data.astype(float, copy=False)
    if not do_separate_z:
        for c in range(data.shape[0]):
            out[c] = skimage_resize(data[c], new_shape, order)
        return out
    assert axis is not None
    shape_2d = np.delete(new_shape, axis)
    for c in range(data.shape[0]):
        tmp = new_shape.copy()
        tmp[axis] = shape[axis]
        here = np.zeros(tmp)
        for i in range(shape[axis]):
            index = (slice(None),) * axis + (i,)
            here[index] = skimage_resize(data[c][index], shape_2d, order)
        if shape[axis] != new_shape[axis]:
            rows, cols, dim = new_shape
            orig = here.shape
            grids = np.mgrid[:rows, :cols, :dim].astype(float)
            coords = np.array([(float(o) / n) * (g + 0.5) - 0.5 for o, n, g in zip(orig, new_shape, grids)])
            out[c] = ndimage.map_coordinates(here, coords, order=order_z, mode="nearest")
        else:
            out[c] = here
    return out


def resample_to_shape(data: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float],
                      new_spacing: Sequence[float], order: int = 3, order_z: int = 0,
                      force_separate_z: Optional[bool] = None,
                      threshold: float = ANISOTROPY_THRESHOLD) -> np.ndarray:
    """``resample_data_or_seg_to_shape`` (images and probabilities)."""
    do, axis = separate_z(force_separate_z, current_spacing, new_spacing, threshold)
    return resample(data, new_shape, axis, order, do, order_z)


# ---------------------------------------------------------------- the two ends

def _resampling(section: Dict[str, Any], key: str) -> Dict[str, Any]:
    spec = section[key]
    return {"order": spec["order"], "order_z": spec["order_z"], "force_separate_z": spec.get("force_separate_z"),
            "threshold": section.get("anisotropy_threshold", ANISOTROPY_THRESHOLD)}


def preprocess(data: np.ndarray, spacing_zyx: Sequence[float], section: Dict[str, Any]) -> Tuple[np.ndarray, Dict[str, Any]]:
    """(C, z, y, x) image voxels and their spacing -> the network's input and what :func:`to_input_grid` needs.

    ``section`` is the manifest's ``nnunet`` section (``transpose_forward``, ``spacing``,
    ``normalization``, ``resampling_data``, ``anisotropy_threshold``).
    """
    data = data.astype(np.float32)
    forward = list(section["transpose_forward"])
    data = data.transpose([0, *[i + 1 for i in forward]])
    spacing = [float(spacing_zyx[i]) for i in forward]
    props: Dict[str, Any] = {"spacing_transposed": spacing, "shape_before_cropping": data.shape[1:]}
    data, seg, bbox = crop_to_nonzero(data)
    props["bbox"] = bbox
    props["shape_after_cropping"] = data.shape[1:]
    target = list(section["spacing"])
    if len(target) < data.ndim - 1:  # 2d: the slice axis keeps its spacing
        target = [spacing[0], *target]
    props["target_spacing"] = target
    new_shape = compute_new_shape(data.shape[1:], spacing, target)
    data = normalize(data, seg, section["normalization"])
    data = resample_to_shape(data, new_shape, spacing, target, **_resampling(section, "resampling_data"))
    return data, props


def to_input_grid(logits: np.ndarray, props: Dict[str, Any], section: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    """Network logits on the resampled grid -> ``(labels (z, y, x) uint8, probabilities (C, z, y, x) float32)``
    on the input's array grid (``convert_predicted_logits_to_segmentation_with_correct_shape``).

    ``logits`` keep nnU-Net's float16 through the resampling, as nnU-Net's do. Softmax:
    C = all classes (background first; background probability 1 outside the crop). Sigmoid
    (``regions_class_order``): C = regions, painted in that order where above 0.5.
    """
    logits = resample_to_shape(logits, props["shape_after_cropping"], props["target_spacing"],
                               props["spacing_transposed"], **_resampling(section, "resampling_probabilities"))
    logits = logits.astype(np.float32)
    regions = section.get("regions_class_order")
    if regions:
        probs = 1.0 / (1.0 + np.exp(-logits))
        labels = np.zeros(probs.shape[1:], dtype=np.uint8)
        for i, value in enumerate(regions):
            labels[probs[i] > 0.5] = value
    else:
        probs = np.exp(logits - logits.max(axis=0, keepdims=True))
        probs /= probs.sum(axis=0, keepdims=True)
        labels = probs.argmax(0).astype(np.uint8)
    probs = probs.astype(np.float32, copy=False)
    shape = tuple(props["shape_before_cropping"])
    full_labels = insert_crop(np.zeros(shape, dtype=np.uint8), labels, props["bbox"])
    full_probs = np.zeros((probs.shape[0], *shape), dtype=np.float32)
    if not regions:
        full_probs[0] = 1
    insert_crop(full_probs, probs, props["bbox"])
    backward = list(section["transpose_backward"])
    return full_labels.transpose(backward), full_probs.transpose([0, *[i + 1 for i in backward]])
