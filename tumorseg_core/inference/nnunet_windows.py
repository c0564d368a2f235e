"""nnU-Net v2's sliding window, as its predictor runs it, for imported nnU-Net models.

Reproduces ``nnUNetPredictor.predict_logits_from_preprocessed_data`` on the preprocessed
volume (``imaging/nnunet_preprocess.py``), so that the logits agree with nnU-Net's own
(nnunetv2 2.x, Apache-2.0):

- the volume is zero-padded to at least one patch, centred (``pad_nd_image``);
- windows start at :func:`compute_steps` (step = ``tile_step_size`` x patch, spread evenly);
  a 2D model runs every slice of the first axis;
- each window is the mean of the network's *logits* over the mirror combinations of the
  checkpoint's ``inference_allowed_mirroring_axes`` (nnU-Net averages logits, not
  probabilities);
- windows are weighted by :func:`gaussian` (sigma = patch / 8, peak 10, zeros replaced by
  the smallest non-zero value, float16) and accumulated in float16 as nnU-Net does, then
  divided by the summed weights;
- several folds: their logits are summed in float16 and divided by their number.

TumorSeg's general :class:`~tumorseg_core.inference.predictor.Predictor` averages
probabilities instead; packages with an ``nnunet`` manifest section use this module.
torch is imported inside the functions.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import gaussian_filter

from tumorseg_core.errors import CancelledError
from tumorseg_core.inference import slab_forward

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


def compute_steps(image_size: Sequence[int], tile_size: Sequence[int], tile_step_size: float) -> List[List[int]]:
    """Window starts per axis (``compute_steps_for_sliding_window``)."""
    target = [i * tile_step_size for i in tile_size]
    num_steps = [int(np.ceil((i - k) / j)) + 1 for i, j, k in zip(image_size, target, tile_size)]
    steps = []
    for dim in range(len(tile_size)):
        max_step = image_size[dim] - tile_size[dim]
        actual = max_step / (num_steps[dim] - 1) if num_steps[dim] > 1 else 99999999999
        steps.append([int(np.round(actual * i)) for i in range(num_steps[dim])])
    return steps


def gaussian(tile_size: Sequence[int], sigma_scale: float = 1.0 / 8, value_scaling_factor: float = 10) -> Any:
    """nnU-Net's window weights (``compute_gaussian``) as a float16 torch tensor."""
    import torch

    tmp = np.zeros(tile_size)
    tmp[tuple(i // 2 for i in tile_size)] = 1
    weights = gaussian_filter(tmp, [i * sigma_scale for i in tile_size], 0, mode="constant", cval=0)
    weights /= np.max(weights) / value_scaling_factor
    out = torch.from_numpy(weights).to(dtype=torch.float16)
    zero = out == 0
    out[zero] = torch.min(out[~zero])
    return out


def pad_to_patch(data: Any, patch: Sequence[int]) -> Tuple[Any, Tuple[slice, ...]]:
    """Zero-pad (C, ...) ``data`` (tensor) to at least ``patch`` on its last axes, centred; return the undo slicer."""
    import torch

    old = list(data.shape)
    new = list(old[: len(old) - len(patch)]) + [max(p, s) for p, s in zip(patch, old[len(old) - len(patch):])]
    diff = [n - o for n, o in zip(new, old)]
    below = [d // 2 for d in diff]
    above = [d // 2 + d % 2 for d in diff]
    if any(diff):
        pads = []
        for lo, hi in zip(reversed(below), reversed(above)):
            pads += [lo, hi]
        data = torch.nn.functional.pad(data, pads, mode="constant", value=0)
    undo = tuple(slice(lo, lo + o) for lo, o in zip(below, old))
    return data, undo


def window_slicers(image_size: Sequence[int], patch: Sequence[int], step: float) -> List[Tuple[Any, ...]]:
    """Slicers into (C, z, y, x) for every window (``_internal_get_sliding_window_slicers``)."""
    slicers = []
    if len(patch) < len(image_size):  # 2d: every slice of the first axis
        steps = compute_steps(image_size[1:], patch, step)
        for d in range(image_size[0]):
            for sx in steps[0]:
                for sy in steps[1]:
                    slicers.append((slice(None), d, *[slice(s, s + t) for s, t in zip((sx, sy), patch)]))
    else:
        steps = compute_steps(image_size, patch, step)
        for sx in steps[0]:
            for sy in steps[1]:
                for sz in steps[2]:
                    slicers.append((slice(None), *[slice(s, s + t) for s, t in zip((sx, sy, sz), patch)]))
    return slicers


def mirrored_logits(network: Any, x: Any, mirror_axes: Optional[Sequence[int]],
                    after_pass: Optional[Callable[[float], None]] = None) -> Any:
    """The network's logits averaged over every mirror combination (``_internal_maybe_mirror_and_predict``).

    ``after_pass(fraction)``: called after each forward pass with its share of the window
    (1 / number of passes); it may raise CancelledError, so a cancel waits for one pass, not
    for all of them (8 with mirroring on every axis).
    """
    import torch

    axes = [m + 2 for m in mirror_axes] if mirror_axes else []
    combos = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
    share = 1.0 / (len(combos) + 1)
    prediction = network(x)
    if isinstance(prediction, (list, tuple)):
        prediction = prediction[0]
    if after_pass is not None:
        after_pass(share)
    for combo in combos:
        out = network(torch.flip(x, combo))
        if isinstance(out, (list, tuple)):
            out = out[0]
        prediction += torch.flip(out, combo)
        if after_pass is not None:
            after_pass(share)
    if combos:
        prediction /= len(combos) + 1
    return prediction


def sliding_window_logits(network: Any, data: Any, patch: Sequence[int], num_heads: int,
                          mirror_axes: Optional[Sequence[int]], step: float = 0.5,
                          progress: Optional[Callable[[float], None]] = None,
                          cancel: Optional[CancelFn] = None, device: Any = None) -> Any:
    """One network over (C, z, y, x) float32 ``data`` (tensor): float16 logits (K, z, y, x)
    (``predict_sliding_window_return_logits``).

    ``device``: where the network runs (a ``torch.device``; None: the CPU). Each window goes
    there and its prediction comes back; the sums stay on the CPU (nnU-Net's
    ``perform_everything_on_device=False``). On CUDA the network runs under autocast, as
    nnU-Net's predictor runs it.
    """
    import contextlib

    import torch

    def check() -> None:
        if cancel is not None and cancel():
            raise CancelledError()

    def after_pass(share: float) -> None:
        if progress is not None:
            progress(share)
        check()

    on_cuda = device is not None and torch.device(device).type == "cuda"
    precision = torch.autocast("cuda", enabled=True) if on_cuda else contextlib.nullcontext()
    # the CPU's slab-wise forward (slab_forward.py) also checks between its slabs
    with torch.inference_mode(), precision, slab_forward.polling(check if cancel is not None else None):
        padded, undo = pad_to_patch(data, patch)
        slicers = window_slicers(padded.shape[1:], patch, step)
        logits = torch.zeros((num_heads, *padded.shape[1:]), dtype=torch.half)
        weights_sum = torch.zeros(padded.shape[1:], dtype=torch.half)
        weights = gaussian(tuple(patch))
        for sl in slicers:
            check()
            window = torch.clone(padded[sl][None], memory_format=torch.contiguous_format)
            if device is not None:
                window = window.to(device)
            prediction = mirrored_logits(network, window, mirror_axes, after_pass)[0].to("cpu")
            prediction *= weights
            logits[sl] += prediction
            weights_sum[sl[1:]] += weights
        torch.div(logits, weights_sum, out=logits)
        if torch.any(torch.isinf(logits)):
            raise FloatingPointError("the nnU-Net logits overflowed float16; the model's outputs are too large")
        return logits[(slice(None), *undo[1:])]


def ensemble_logits(networks: Sequence[Any], data: np.ndarray, patch: Sequence[int], num_heads: int,
                    mirror_axes: Optional[Sequence[int]], step: float = 0.5,
                    progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None,
                    device: Any = None) -> np.ndarray:
    """Every fold over the preprocessed (C, z, y, x) volume: mean float16 logits as numpy
    (``predict_logits_from_preprocessed_data``); ``device``: where the networks are (None: CPU)."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    padded_shape = [max(p, s) for p, s in zip(patch, tensor.shape[1 + len(tensor.shape[1:]) - len(patch):])]
    full = list(tensor.shape[1:len(tensor.shape) - len(patch)]) + padded_shape
    per_network = len(window_slicers(full, patch, step))
    total = max(1, per_network * len(networks))
    done = [0.0]

    def tick(share: float) -> None:
        done[0] += share
        if progress is not None:
            progress(min(done[0] / total, 1.0), f"window {min(int(done[0]) + 1, total)}/{total}")

    prediction = None
    for network in networks:
        network.eval()
        out = sliding_window_logits(network, tensor, patch, num_heads, mirror_axes, step, tick, cancel, device)
        prediction = out if prediction is None else prediction + out
    assert prediction is not None
    if len(networks) > 1:
        prediction /= len(networks)
    return prediction.numpy()
