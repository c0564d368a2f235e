"""Training-time data augmentation (MONAI dictionary transforms on ``"image"``/``"label"``).

The transforms take one preprocessed case::

    {"image": float32 (C, z, y, x), "label": uint8 (1, z, y, x)}

and return one training patch of the same layout with spatial size ``patch_size_zyx``.
Order (nnU-Net style, so the expensive spatial resampling runs on a patch, not the case):

1. crop the (enlarged) crop size with foreground oversampling, padding short axes
   (:class:`~tumorseg_core.training.foreground_crop.RandForegroundCropd`, ``RandCropByPosNegLabeld``
   semantics from precomputed foreground coordinates; ``pos:neg`` = 2:1 by default);
2. spatial: rotation + scaling (``RandAffined``, which also centre-crops the enlarged
   crop to the patch so rotated corners are real data, not padding), optional elastic
   deformation, flips along each axis;
3. intensity (image only): bias field, gamma, contrast scale, Gaussian noise, blur.

Every strength and probability comes from a config dict; :data:`DEFAULT_AUGMENT` holds
the defaults and documents the keys. The transforms are randomised with MONAI's
per-transform generators; the training loop seeds them per sample
(``Compose.set_random_state``) so a run is reproducible and resumable.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from tumorseg_core.errors import InputError

# Defaults chosen after nnU-Net's: strong enough to matter on small data sets, mild
# enough not to destroy tumour boundaries. Rotation in degrees, scale as a factor range.
DEFAULT_AUGMENT: dict[str, Any] = {
    "pos": 2.0,  # foreground-centred crops per background-centred crop
    "neg": 1.0,
    # Foreground crop centres: "voxel" (any foreground voxel, RandCropByPosNegLabeld) or
    # "lesion" (a lesion drawn uniformly first: small lesions as often as big ones).
    "fg_sampling": "voxel",
    "rotation_prob": 0.2,
    "rotation_degrees": 30.0,  # +/- around each axis
    "scale_prob": 0.2,
    "scale_range": [0.7, 1.4],
    "elastic_prob": 0.0,  # off by default: slow on CPU
    "elastic_sigma": [9.0, 13.0],
    "elastic_magnitude": [0.0, 200.0],
    "flip_prob": 0.5,  # per axis
    "bias_field_prob": 0.1,
    "bias_field_coeff": [0.0, 0.1],
    "gamma_prob": 0.3,
    "gamma_range": [0.7, 1.5],
    "contrast_prob": 0.15,
    "contrast_factor": 0.25,  # multiply by 1 + U(-f, f)
    "noise_prob": 0.1,
    "noise_std": 0.1,
    "blur_prob": 0.1,
    "blur_sigma": [0.5, 1.0],
}


def augment_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Return :data:`DEFAULT_AUGMENT` updated with ``config``; unknown keys are an error."""
    merged = dict(DEFAULT_AUGMENT)
    for key, value in (config or {}).items():
        if key not in DEFAULT_AUGMENT:
            raise InputError(
                f"unknown augmentation setting {key!r}; use one of: {', '.join(sorted(DEFAULT_AUGMENT))}"
            )
        merged[key] = value
    if merged["fg_sampling"] not in ("voxel", "lesion"):
        raise InputError(f"augmentation fg_sampling={merged['fg_sampling']!r} is unknown; use voxel or lesion")
    for key, value in merged.items():
        if key.endswith("_prob") and not 0.0 <= float(value) <= 1.0:
            raise InputError(f"augmentation {key}={value} is not a probability; use a value in 0..1")
    return merged


def _crop_size_zyx(patch_size_zyx: Sequence[int], cfg: dict[str, Any]) -> list[int]:
    """Crop size before the affine transform: large enough that a patch rotated by the
    maximum angle and shrunk by the smallest scale factor still lies inside real data."""
    patch = [int(p) for p in patch_size_zyx]
    if cfg["rotation_prob"] <= 0 and cfg["scale_prob"] <= 0:
        return patch
    factor = 1.0
    if cfg["rotation_prob"] > 0:
        angle = math.radians(min(abs(float(cfg["rotation_degrees"])), 45.0))
        factor *= math.cos(angle) + math.sin(angle)
    if cfg["scale_prob"] > 0:
        # MONAI's scale acts on the sampling grid: a factor s samples s * patch of input.
        factor *= max(1.0, float(cfg["scale_range"][1]))
    return [int(math.ceil(p * factor)) for p in patch]


def build_train_transforms(patch_size_zyx: Sequence[int], config: dict[str, Any] | None = None,
                           hard_fraction: float = 0.0):
    """Build the training transform chain.

    Args:
        patch_size_zyx: network patch size in array order (z, y, x).
        config: augmentation settings (keys of :data:`DEFAULT_AUGMENT`); missing keys take
            the defaults.
        hard_fraction: share of crops centred on a hard negative where the sample carries
            ``"hard_coords"`` (see :mod:`tumorseg_core.training.hard_negatives`).

    Returns:
        ``monai.transforms.Compose`` mapping ``{"image": (C,z,y,x) float32 numpy, "label":
        (1,z,y,x) numpy[, "fg_coords": (N, 3) int][, "hard_coords": (N, 4) int]}`` to a dict with image and label of
        spatial size ``patch_size_zyx`` (image float32 tensor, label float tensor of
        integer values).
    """
    import monai.transforms as mt
    import numpy as np

    from tumorseg_core.training.foreground_crop import RandForegroundCropd

    cfg = augment_config(config)
    patch = [int(p) for p in patch_size_zyx]
    crop = _crop_size_zyx(patch, cfg)
    keys = ["image", "label"]
    chain: list[Any] = [
        # Pad + foreground-oversampled crop in one cheap copy (RandCropByPosNegLabeld
        # semantics without scanning the whole label per sample; see foreground_crop.py).
        RandForegroundCropd(keys, "label", crop, pos=float(cfg["pos"]), neg=float(cfg["neg"]),
                            per_lesion=cfg["fg_sampling"] == "lesion", hard_fraction=hard_fraction),
        mt.EnsureTyped(keys=keys, data_type="tensor", track_meta=False),
    ]
    rot = math.radians(float(cfg["rotation_degrees"])) if cfg["rotation_prob"] > 0 else 0.0
    lo, hi = (float(s) for s in cfg["scale_range"])
    # RandAffine's scale_range is added to 1 (a value of 0 means "no scaling").
    scale = [(lo - 1.0, hi - 1.0)] * 3 if cfg["scale_prob"] > 0 else None
    affine_prob = max(float(cfg["rotation_prob"]), float(cfg["scale_prob"]))
    chain.append(
        mt.RandAffined(
            keys=keys,
            spatial_size=patch,  # also centre-crops the enlarged crop when not applied
            prob=affine_prob,
            rotate_range=[rot, rot, rot] if rot else None,
            scale_range=scale,
            mode=["bilinear", "nearest"],
            padding_mode="zeros",
        )
    )
    if cfg["elastic_prob"] > 0:
        chain.append(
            mt.Rand3DElasticd(
                keys=keys,
                sigma_range=tuple(cfg["elastic_sigma"]),
                magnitude_range=tuple(cfg["elastic_magnitude"]),
                prob=float(cfg["elastic_prob"]),
                mode=["bilinear", "nearest"],
                padding_mode="zeros",
            )
        )
    if cfg["flip_prob"] > 0:
        chain += [mt.RandFlipd(keys=keys, prob=float(cfg["flip_prob"]), spatial_axis=a) for a in range(3)]
    if cfg["bias_field_prob"] > 0:
        chain.append(
            mt.RandBiasFieldd(
                keys="image", prob=float(cfg["bias_field_prob"]), coeff_range=tuple(cfg["bias_field_coeff"])
            )
        )
    if cfg["gamma_prob"] > 0:
        # retain_stats keeps a z-scored image z-scored after the gamma curve.
        chain.append(
            mt.RandAdjustContrastd(
                keys="image", prob=float(cfg["gamma_prob"]), gamma=tuple(cfg["gamma_range"]), retain_stats=True
            )
        )
    if cfg["contrast_prob"] > 0:
        chain.append(
            mt.RandScaleIntensityd(
                keys="image", prob=float(cfg["contrast_prob"]), factors=float(cfg["contrast_factor"])
            )
        )
    if cfg["noise_prob"] > 0:
        chain.append(
            mt.RandGaussianNoised(keys="image", prob=float(cfg["noise_prob"]), std=float(cfg["noise_std"]))
        )
    if cfg["blur_prob"] > 0:
        sigma = tuple(float(s) for s in cfg["blur_sigma"])
        chain.append(
            mt.RandGaussianSmoothd(
                keys="image", prob=float(cfg["blur_prob"]), sigma_x=sigma, sigma_y=sigma, sigma_z=sigma
            )
        )
    # Safety net: whatever the chain did, the network gets exactly the patch size.
    chain.append(mt.ResizeWithPadOrCropd(keys=keys, spatial_size=patch))
    chain.append(mt.EnsureTyped(keys="image", data_type="tensor", dtype=np.float32, track_meta=False))
    return mt.Compose(chain)
