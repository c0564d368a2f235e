"""Flip (mirror) test-time augmentation, per window, at constant memory.

Like nnU-Net's mirroring: every combination of the allowed spatial axes is flipped,
predicted and flipped back, and the *probabilities* are averaged. It costs one forward
pass per combination (8 in 3D), which is why it is off by default (nnU-Net #1434: 42
vs 3 minutes on CPU).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

# A numpy array or a torch tensor: the flips work on both without importing torch.
Batch = TypeVar("Batch", bound=Any)


def flip_axes_combinations(
    axes: Sequence[int] = (2, 3, 4), max_passes: int = 8
) -> list[tuple[int, ...]]:
    """Flip-axis tuples to run, identity ``()`` first, then singles, pairs, ...

    ``axes`` index a (B, C, z, y, x) tensor (2 = z, 3 = y, 4 = x). With 3 axes there are
    8 combinations; ``max_passes`` keeps the first ``max_passes`` of them (fewest flips
    first), so ``max_passes=1`` means no augmentation.
    """
    if max_passes < 1:
        raise ValueError(f"max_passes must be >= 1, got {max_passes}")
    unique_axes = tuple(dict.fromkeys(int(a) for a in axes))
    combos: list[tuple[int, ...]] = []
    for k in range(len(unique_axes) + 1):
        combos.extend(itertools.combinations(unique_axes, k))
    return combos[:max_passes]


def predict_with_flips(
    fn: Callable[[Batch], Batch],
    batch: Batch,
    combinations: Sequence[tuple[int, ...]] | None = None,
) -> Batch:
    """Mean of ``flip(fn(flip(batch)))`` over the flip combinations.

    ``batch`` is (B, C, z, y, x); ``fn`` maps it to (B, K, z, y, x) probabilities (apply
    the softmax/sigmoid inside ``fn``: averaging logits is not the same). The default
    combinations are all flips of axes 2, 3, 4. Returns float32 (B, K, z, y, x), of
    the input's kind (numpy array or torch tensor).
    """
    flip = _numpy_flip if isinstance(batch, np.ndarray) else _torch_flip
    combos = flip_axes_combinations() if combinations is None else list(combinations)
    if not combos:
        raise ValueError("at least one flip combination (e.g. the identity ()) is needed")
    total = None
    for axes in combos:
        flipped = flip(batch, axes) if axes else batch
        out = fn(flipped)
        out = out.astype(np.float32, copy=False) if isinstance(out, np.ndarray) else out.float()
        if axes:
            out = flip(out, axes)
        # Summing one pass at a time keeps memory at two outputs, not one per flip.
        total = out if total is None else total + out
    assert total is not None
    return total / len(combos)


def _numpy_flip(array: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.flip(array, axes)


def _torch_flip(tensor: Any, axes: tuple[int, ...]) -> Any:
    import torch

    return torch.flip(tensor, axes)
