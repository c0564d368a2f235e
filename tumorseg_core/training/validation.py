"""Validation during training: sliding-window inference on whole preprocessed cases, Dice.

Runs on the model grid (the cached arrays), which is what the network sees; Dice
there is what selects the best checkpoint. A label absent from both the prediction
and the truth of a case counts as Dice 1 (nothing to find, nothing found), absent
from the truth but predicted as 0.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np
import torch

from tumorseg_core.errors import CancelledError
from tumorseg_core.training.cache import CachedCase

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
    """Argmax labels (z, y, x) uint8 for one preprocessed image (C, z, y, x) float32."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.array(image, dtype=np.float32))[None].to(device)  # copy: the cache is a read-only mmap
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=amp and device.type == "cuda"):
        logits = sliding_window_inference(
            x, roi_size=list(patch_zyx), sw_batch_size=sw_batch, predictor=model,
            overlap=overlap, mode="gaussian",
        )
    return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


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
