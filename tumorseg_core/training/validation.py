"""Validation during training: whole preprocessed cases predicted as inference will, Dice.

Runs on the model grid (the cached arrays), which is what the network sees; Dice
there is what selects the best checkpoint. A 3D network runs a Gaussian sliding window;
a 2.5D network (:class:`~tumorseg_core.models.unet25d.StackUNet25D`) runs slice by slice with
real neighbours, each plane in Gaussian-blended tiles of the training patch, as slice mode does
(a 3D window would give the slices at its borders repeated context and judge the network on
what it never meets). A label absent
from both the prediction and the truth of a case counts as Dice 1 (nothing to find, nothing
found), absent from the truth but predicted as 0.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from tumorseg_core.errors import CancelledError
from tumorseg_core.training.cache import CachedCase

if TYPE_CHECKING:
    from tumorseg_core.models.unet25d import StackUNet25D

logger = logging.getLogger(__name__)


def predict_case(
    model: torch.nn.Module,
    image: np.ndarray,
    patch_zyx: Sequence[int],
    device: torch.device,
    overlap: float = 0.5,
    sw_batch: int = 2,
    amp: bool = False,
) -> np.ndarray:
    """Argmax labels (z, y, x) uint8 for one preprocessed image (C, z, y, x) float32.

    A 2.5D network is run by :func:`predict_by_slices` (tiles of ``patch_zyx``'s (y, x), ``sw_batch``
    tiles at a time).
    """
    from monai.inferers import sliding_window_inference

    from tumorseg_core.models.unet25d import StackUNet25D

    if isinstance(model, StackUNet25D):
        return predict_by_slices(model, image, device, tuple(patch_zyx[1:]), overlap, batch=sw_batch, amp=amp)

    x = torch.from_numpy(np.array(image, dtype=np.float32))[None].to(device)  # copy: the cache is a read-only mmap
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=amp and device.type == "cuda"):
        logits = sliding_window_inference(
            x, roi_size=list(patch_zyx), sw_batch_size=sw_batch, predictor=model,
            overlap=overlap, mode="gaussian",
        )
    return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


def predict_by_slices(
    model: StackUNet25D,
    image: np.ndarray,
    device: torch.device,
    tile_hw: Sequence[int],
    overlap: float = 0.25,
    batch: int = 4,
    amp: bool = False,
) -> np.ndarray:
    """Argmax labels (z, y, x) uint8 of a 2.5D network, every axial slice of ``image`` (C, z, y, x) in turn.

    Slice z sees slices ``z-k .. z+k`` (the volume's first and last slices repeat at its ends);
    its plane is run in ``tile_hw`` tiles (:func:`~tumorseg_core.inference.plane_tiles.tiled_probabilities`),
    as :mod:`tumorseg_core.inference.slice_mode` runs it.
    """
    from tumorseg_core.inference.plane_tiles import tiled_probabilities

    c, z, h, w = image.shape
    k = model.context
    planes = np.asarray(image, dtype=np.float32)
    neighbours = np.clip(np.arange(z)[:, None] + np.arange(-k, k + 1)[None, :], 0, z - 1)  # (z, 2k+1)

    def run(tiles: np.ndarray) -> np.ndarray:
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=amp and device.type == "cuda"):
            logits = model.forward_stack(torch.from_numpy(tiles).to(device))
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    out = np.empty((z, h, w), dtype=np.uint8)
    for i in range(z):
        # (C, 2k+1, H, W) -> (C * (2k+1), H, W): channel-major, as StackUNet25D.forward stacks
        stack = np.ascontiguousarray(planes[:, neighbours[i]]).reshape(c * (2 * k + 1), h, w)
        out[i] = tiled_probabilities(stack, tile_hw, overlap, run, batch=batch).argmax(axis=0)
    return out


def case_dice(pred: np.ndarray, truth: np.ndarray, label_values: Sequence[int]) -> dict[int, float]:
    """Dice per label value for one case; ``pred``/``truth`` are (z, y, x) label maps."""
    from tumorseg_core.evaluation.metrics import dice

    scores = {}
    for value in label_values:
        p, t = pred == value, truth == value
        scores[int(value)] = 1.0 if not p.any() and not t.any() else float(dice(p, t))
    return scores


def validate(
    model: torch.nn.Module,
    cases: Sequence[CachedCase],
    patch_zyx: Sequence[int],
    label_values: Sequence[int],
    device: torch.device,
    overlap: float = 0.5,
    sw_batch: int = 2,
    amp: bool = False,
    cancel: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Mean foreground Dice over ``cases``.

    Returns ``{"dice": mean over cases and labels, "per_label": {value: mean},
    "per_case": {id: mean}, "cases": n}``; ``dice`` is NaN without cases.
    """
    was_training = model.training
    model.eval()
    per_case: dict[str, float] = {}
    per_label: dict[int, list[float]] = {int(v): [] for v in label_values}
    try:
        for case in cases:
            if cancel is not None and cancel():
                raise CancelledError("training cancelled during validation; the last checkpoint is kept")
            arrays = case.load(mmap=True)
            pred = predict_case(model, arrays["image"], patch_zyx, device, overlap, sw_batch, amp)
            scores = case_dice(pred, np.asarray(arrays["label"][0]), label_values)
            for value, score in scores.items():
                per_label[value].append(score)
            per_case[case.id] = float(np.mean(list(scores.values())))
    finally:
        model.train(was_training)
    label_means = {v: float(np.mean(s)) for v, s in per_label.items() if s}
    mean = float(np.mean(list(per_case.values()))) if per_case else float("nan")
    return {"dice": mean, "per_label": label_means, "per_case": per_case, "cases": len(per_case)}
