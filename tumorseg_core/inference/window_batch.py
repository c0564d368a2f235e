"""One batch of windows through every network: mean probabilities x Gaussian, as numpy.

Two paths with the same arithmetic, chosen by the backend's runners:

- :func:`run_batch_numpy` for the exported CPU runners (OpenVINO, ONNX Runtime), which
  take and return numpy arrays: a CPU run on them never imports torch (~200 MB of
  memory and ~1.5 s of start-up per process).
- :func:`run_batch_torch` for ``nn.Module`` runners on any device, with AMP on CUDA.

Both average softmax/sigmoid *probabilities* over the networks (an ensemble) and the
flip passes (TTA), drop the softmax background channel (the stitcher implies it from the
weights) and multiply by the window's Gaussian. Returns float32 (B, K', z, y, x).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit

from tumorseg_core.errors import ModelPackageError
from tumorseg_core.inference.tta import predict_with_flips


def check_output_shape(shape: Sequence[int], batch_shape: Sequence[int], num_outputs: int) -> None:
    """A network's (B, K, z, y, x) output must match its (B, C, z, y, x) input and K outputs."""
    expected = (batch_shape[0], num_outputs, *batch_shape[2:])
    if tuple(shape) != tuple(expected):
        raise ModelPackageError(
            f"network output has shape {tuple(shape)}, expected {expected}; "
            "check out_channels and patch_size in the manifest"
        )


def softmax_numpy(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of (B, K, z, y, x) float32 logits (max subtracted: no overflow)."""
    out = logits - logits.max(axis=1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


def run_batch_numpy(
    runners: Sequence[Any],
    windows: np.ndarray,
    gaussian: np.ndarray,
    flips: Sequence[tuple[int, ...]],
    output_type: str,
    num_outputs: int,
) -> np.ndarray:
    """(B, C, z, y, x) float32 windows -> weighted mean probabilities (B, K', z, y, x).

    ``runners`` map numpy windows to numpy logits; ``gaussian`` is (z, y, x) float32.
    """

    def probabilities(runner: Any, x: np.ndarray) -> np.ndarray:
        logits = np.asarray(runner(x), dtype=np.float32)
        check_output_shape(logits.shape, x.shape, num_outputs)
        return softmax_numpy(logits) if output_type == "softmax" else expit(logits)

    return _weighted_mean(runners, windows, probabilities, flips, output_type, gaussian).astype(np.float32, copy=False)


def run_batch_torch(
    modules: Sequence[Any],
    windows: np.ndarray,
    gaussian: Any,
    device: Any,
    flips: Sequence[tuple[int, ...]],
    output_type: str,
    num_outputs: int,
    amp: bool,
) -> np.ndarray:
    """Same as :func:`run_batch_numpy` for ``nn.Module`` runners on ``device``.

    ``gaussian`` is a (z, y, x) tensor already on ``device``; AMP (float16 autocast) is
    used on CUDA when ``amp`` is set, with the activations computed in float32.
    """
    import torch

    x = torch.from_numpy(windows).to(device)
    use_amp = amp and torch.device(device).type == "cuda"

    def probabilities(net: Any, t: Any) -> Any:
        out = net(t)
        if isinstance(out, (list, tuple)):  # deep supervision: the full-resolution head
            out = out[0]
        check_output_shape(out.shape, t.shape, num_outputs)
        logits = out.float()  # activations in float32 even under AMP
        return torch.softmax(logits, dim=1) if output_type == "softmax" else torch.sigmoid(logits)

    with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
        result = _weighted_mean(modules, x, probabilities, flips, output_type, gaussian)
    return result.float().cpu().numpy()


def _weighted_mean(runners: Sequence[Any], windows: Any, probabilities: Any, flips: Sequence[tuple[int, ...]],
                   output_type: str, gaussian: Any) -> Any:
    """Mean over runners and flips of ``probabilities(runner, windows)``, background dropped, x Gaussian.

    Works on numpy arrays and torch tensors alike (the arithmetic is the same).
    """
    total = None
    for runner in runners:
        probs = predict_with_flips(lambda t, runner=runner: probabilities(runner, t), windows, flips)
        total = probs if total is None else total + probs
    assert total is not None
    if output_type == "softmax":
        total = total[:, 1:]  # background is implied by the weights (see stitching)
    return (total / len(runners)) * gaussian
