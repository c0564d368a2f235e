"""One case through an imported nnU-Net v2 model, the way nnU-Net's own predictor runs it.

Packages with an ``nnunet`` manifest section go through here (``Segmenter`` dispatches):
the input channels (aligned onto the first one's grid) are taken as nnU-Net takes them,
voxel arrays with their spacing (direction ignored, as nnU-Net ignores it), then
``imaging/nnunet_preprocess.preprocess`` -> ``nnunet_windows.ensemble_logits`` (every
fold, mirroring, Gaussian) -> ``nnunet_preprocess.to_input_grid``. The label map lands on
the first input's exact grid.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from tumorseg_core.imaging import nnunet_preprocess
from tumorseg_core.inference import nnunet_windows

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


def case_arrays(images: Sequence[sitk.Image]) -> Tuple[np.ndarray, Tuple[float, ...]]:
    """nnU-Net's view of a case: (C, z, y, x) float32 voxels and the spacing (z, y, x) of the first image."""
    arrays = np.stack([sitk.GetArrayFromImage(image) for image in images]).astype(np.float32, copy=False)
    return arrays, tuple(float(s) for s in images[0].GetSpacing()[::-1])


def predict_case(networks: Sequence[Any], arrays: np.ndarray, spacing_zyx: Sequence[float], section: Dict[str, Any],
                 num_heads: int, *, mirror: bool = True, step: Optional[float] = None,
                 progress: Optional[ProgressFn] = None,
                 cancel: Optional[CancelFn] = None, device: Any = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(labels (z, y, x) uint8, probabilities (C, z, y, x) float32)`` on the arrays' grid.

    ``mirror``: nnU-Net's mirroring over the section's ``mirror_axes``; ``step``: window
    step as a fraction of the patch (default: the section's ``tile_step_size``, 0.5);
    ``device``: where ``networks`` are (a ``torch.device``; None: the CPU).
    """
    data, props = nnunet_preprocess.preprocess(arrays, spacing_zyx, section)
    logits = nnunet_windows.ensemble_logits(
        networks, data, section["patch_size"], num_heads, section["mirror_axes"] if mirror else None,
        section["tile_step_size"] if step is None else step, progress=progress, cancel=cancel, device=device,
    )
    del data
    return nnunet_preprocess.to_input_grid(logits, props, section)
