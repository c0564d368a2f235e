"""Training losses: the one place in TumorSeg that names MONAI loss classes.

``build_loss(name, output_type)`` returns a ``torch.nn.Module`` called as
``loss(logits, target)``:

* ``logits``: float tensor (B, C, z, y, x), raw network outputs (no activation).
* ``target``: for ``output_type="softmax"`` integer labels (B, 1, z, y, x) with values
  in 0..C-1 (channel k is label value k, channel 0 background); for
  ``output_type="sigmoid"`` a binary tensor (B, C, z, y, x), channel k-1 = region k.

Names: ``dice``, ``focal``, ``dice_ce``, ``dice_focal``.

Design decisions (why it is not always the plain MONAI class):

* ``include_background`` only affects the **Dice** term of softmax losses. The
  voxel-wise terms (cross-entropy, focal) always use every channel: MONAI's
  ``FocalLoss(use_softmax=True, include_background=False)`` takes the softmax over the
  foreground channels only, which for a 2-channel model is identically zero.
* Sigmoid outputs have no background channel, so every channel is kept.
* ``class_weights`` (one non-negative number per network channel, background first
  for softmax) weight every term: the voxel-wise term per class (CE/focal ``weight``,
  BCE ``pos_weight`` per region) and the Dice term per class (the background entry is
  dropped when the Dice term excludes background). Use them against background
  imbalance, e.g. ``[0.1, 1.0]``.
* softmax ``dice_ce`` and sigmoid ``dice_focal`` are MONAI's ``DiceCELoss`` and
  ``DiceFocalLoss``. Sigmoid ``dice_ce`` and softmax ``dice_focal`` are a sum of
  MONAI ``DiceLoss`` and a voxel-wise term, because MONAI's ``DiceCELoss`` applies a
  softmax cross-entropy to multi-channel sigmoid outputs and ``DiceFocalLoss`` uses a
  sigmoid focal term even for softmax outputs.

torch and MONAI are imported inside :func:`build_loss` so importing this module is cheap.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from tumorseg_core.errors import TumorSegError

logger = logging.getLogger(__name__)

LOSS_NAMES: tuple[str, ...] = ("dice", "focal", "dice_ce", "dice_focal")
OUTPUT_TYPES: tuple[str, ...] = ("softmax", "sigmoid")

# Extra keyword arguments build_loss accepts, by the term they configure.
_DICE_KW = ("smooth_nr", "smooth_dr", "batch", "squared_pred", "jaccard")
_FOCAL_KW = ("gamma", "alpha")
_CE_KW = ("label_smoothing",)
_ALLOWED_KW: dict[str, tuple[str, ...]] = {
    "dice": _DICE_KW,
    "focal": _FOCAL_KW,
    "dice_ce": _DICE_KW + _CE_KW + ("lambda_dice", "lambda_ce"),
    "dice_focal": _DICE_KW + _FOCAL_KW + ("lambda_dice", "lambda_focal"),
}


def _check_weights(class_weights: Sequence[float] | None) -> list[float] | None:
    """Validate class weights: a non-empty sequence of finite numbers >= 0."""
    if class_weights is None:
        return None
    try:
        weights = [float(w) for w in class_weights]
    except (TypeError, ValueError):
        raise TumorSegError(
            f"class_weights must be a list of numbers, one per network channel, got {class_weights!r}"
        ) from None
    if not weights or any(not math.isfinite(w) or w < 0 for w in weights):
        raise TumorSegError(
            f"class_weights must be finite numbers >= 0, one per network channel, got {weights}"
        )
    return weights


def _pick(kw: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The subset of ``kw`` whose keys are in ``keys``."""
    return {k: v for k, v in kw.items() if k in keys}


def build_loss(
    name: str,
    output_type: str = "softmax",
    class_weights: Sequence[float] | None = None,
    include_background: bool = False,
    **kw: Any,
):
    """Build a segmentation loss module.

    Args:
        name: ``dice``, ``focal``, ``dice_ce`` or ``dice_focal``.
        output_type: ``softmax`` (target (B, 1, z, y, x) integer labels) or ``sigmoid``
            (target (B, C, z, y, x) binary regions).
        class_weights: one weight per network channel C (softmax: background first).
        include_background: whether the softmax Dice term includes channel 0.
        **kw: term options: Dice ``smooth_nr``, ``smooth_dr``, ``batch``,
            ``squared_pred``, ``jaccard``; focal ``gamma``, ``alpha``; CE
            ``label_smoothing`` (softmax); ``lambda_dice``, ``lambda_ce``,
            ``lambda_focal``.

    Returns:
        ``torch.nn.Module``; ``module(logits (B, C, z, y, x), target)`` gives a scalar tensor.

    Raises:
        TumorSegError: unknown name, output type, option or bad class weights.
    """
    if name not in LOSS_NAMES:
        raise TumorSegError(f"unknown loss {name!r}; choose one of: {', '.join(LOSS_NAMES)}")
    if output_type not in OUTPUT_TYPES:
        raise TumorSegError(f"unknown output type {output_type!r}; choose one of: {', '.join(OUTPUT_TYPES)}")
    unknown = sorted(set(kw) - set(_ALLOWED_KW[name]))
    if output_type == "sigmoid" and "label_smoothing" in kw:
        unknown.append("label_smoothing")
    if unknown:
        raise TumorSegError(
            f"loss {name!r} does not take option(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(_ALLOWED_KW[name])}"
        )
    weights = _check_weights(class_weights)

    if output_type == "softmax":
        module = _build_softmax(name, weights, include_background, kw)
    else:
        module = _build_sigmoid(name, weights, kw)
    logger.debug("built loss %s (%s, weights=%s): %s", name, output_type, weights, type(module).__name__)
    return module


def _build_softmax(name: str, weights: list[float] | None, include_background: bool, kw: dict[str, Any]):
    """Softmax losses: target (B, 1, ...) integer labels, one-hot encoded inside MONAI."""
    import torch
    from monai.losses import DiceCELoss, DiceLoss, FocalLoss

    # MONAI's Dice weight must match the channels the Dice term actually uses.
    dice_weight = weights if (weights is None or include_background) else weights[1:]
    dice_kw = _pick(kw, _DICE_KW)

    def make_dice():
        return DiceLoss(
            include_background=include_background, to_onehot_y=True, softmax=True,
            weight=dice_weight or None, **dice_kw,
        )

    def make_focal():
        # include_background=True: see module docstring (softmax over all channels).
        return FocalLoss(
            include_background=True, to_onehot_y=True, use_softmax=True, weight=weights, **_pick(kw, _FOCAL_KW)
        )

    if name == "dice":
        return make_dice()
    if name == "focal":
        return make_focal()
    if name == "dice_ce":
        # DiceCELoss drops weight[0] for its Dice term itself when include_background=False,
        # and its CE term always uses all channels.
        return DiceCELoss(
            include_background=include_background, to_onehot_y=True, softmax=True,
            weight=None if weights is None else torch.tensor(weights, dtype=torch.float32),
            **dice_kw, **_pick(kw, _CE_KW + ("lambda_dice", "lambda_ce")),
        )
    return _torch_classes().WeightedSum(
        [(float(kw.get("lambda_dice", 1.0)), make_dice()), (float(kw.get("lambda_focal", 1.0)), make_focal())]
    )


def _build_sigmoid(name: str, weights: list[float] | None, kw: dict[str, Any]):
    """Sigmoid losses: target (B, C, ...) binary regions, every channel kept."""
    from monai.losses import DiceFocalLoss, DiceLoss, FocalLoss

    dice_kw = _pick(kw, _DICE_KW)
    # MONAI's focal rejects a per-class weight list for a single channel; a scalar is equivalent.
    focal_weight: Any = weights[0] if weights is not None and len(weights) == 1 else weights

    def make_dice():
        return DiceLoss(include_background=True, sigmoid=True, weight=weights, **dice_kw)

    if name == "dice":
        return make_dice()
    if name == "focal":
        focal = FocalLoss(include_background=True, use_softmax=False, weight=focal_weight, **_pick(kw, _FOCAL_KW))
        return _torch_classes().FloatTarget(focal)
    if name == "dice_focal":
        dice_focal = DiceFocalLoss(
            include_background=True, sigmoid=True, weight=focal_weight, **dice_kw,
            **_pick(kw, _FOCAL_KW + ("lambda_dice", "lambda_focal")),
        )
        return _torch_classes().FloatTarget(dice_focal)
    return _torch_classes().WeightedSum(
        [(float(kw.get("lambda_dice", 1.0)), make_dice()),
         (float(kw.get("lambda_ce", 1.0)), _torch_classes().ChannelBCE(weights))]
    )


@functools.lru_cache(maxsize=None)
def _torch_classes() -> SimpleNamespace:
    """The private ``nn.Module`` classes, defined on first use so torch is imported lazily."""
    import torch
    import torch.nn.functional as F

    class WeightedSum(torch.nn.Module):
        """``sum(lambda_i * term_i(logits, target))`` over MONAI/torch loss terms."""

        def __init__(self, terms: list) -> None:
            super().__init__()
            self.lambdas = [float(lam) for lam, _ in terms]
            if any(lam < 0 for lam in self.lambdas):
                raise TumorSegError(f"loss term weights (lambda_*) must be >= 0, got {self.lambdas}")
            self.terms = torch.nn.ModuleList([term for _, term in terms])

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            """logits (B, C, z, y, x); target as the terms expect. Returns a scalar tensor."""
            total = self.lambdas[0] * self.terms[0](logits, target)
            for lam, term in zip(self.lambdas[1:], self.terms[1:]):
                total = total + lam * term(logits, target)
            return total

    class FloatTarget(torch.nn.Module):
        """Casts a binary (B, C, ...) integer/bool target to the logits' float dtype."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            """logits (B, C, z, y, x); target (B, C, z, y, x) binary."""
            return self.inner(logits, target.to(logits.dtype))

    class ChannelBCE(torch.nn.Module):
        """Binary cross-entropy with logits, voxel mean; ``pos_weight`` per channel (axis 1)."""

        def __init__(self, weights: list[float] | None) -> None:
            super().__init__()
            self.register_buffer(
                "pos_weight", None if weights is None else torch.tensor(weights, dtype=torch.float32)
            )

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            """logits (B, C, z, y, x); target (B, C, z, y, x) binary."""
            pos_weight = None
            if self.pos_weight is not None:
                channels = logits.shape[1]
                if self.pos_weight.numel() != channels:
                    raise ValueError(
                        f"class_weights has {self.pos_weight.numel()} entries but the network has "
                        f"{channels} channels"
                    )
                # (C, 1, 1, 1) broadcasts along the channel axis; a flat (C,) would broadcast along x.
                pos_weight = self.pos_weight.to(logits.dtype).view([channels] + [1] * (logits.ndim - 2))
            return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=pos_weight)

    return SimpleNamespace(WeightedSum=WeightedSum, FloatTarget=FloatTarget, ChannelBCE=ChannelBCE)
