"""Flip (mirror) test-time augmentation, per window, at constant memory.

Like nnU-Net's mirroring: every combination of the allowed spatial axes is flipped,
predicted and flipped back, and the *probabilities* are averaged. It costs one forward
pass per combination (8 in 3D), which is why it is off by default (nnU-Net #1434: 42
vs 3 minutes on CPU).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch


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
    fn: Callable[[torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    combinations: Sequence[tuple[int, ...]] | None = None,
) -> torch.Tensor:
    """Mean of ``flip(fn(flip(batch)))`` over the flip combinations.

    ``batch`` is (B, C, z, y, x); ``fn`` maps it to (B, K, z, y, x) probabilities (apply
    the softmax/sigmoid inside ``fn``: averaging logits is not the same). The default
    combinations are all flips of axes 2, 3, 4. Returns float32 (B, K, z, y, x).
    """
    combos = flip_axes_combinations() if combinations is None else list(combinations)
    if not combos:
        raise ValueError("at least one flip combination (e.g. the identity ()) is needed")
    total: torch.Tensor | None = None
    for axes in combos:
        flipped = torch.flip(batch, axes) if axes else batch
        out = fn(flipped).float()
        if axes:
            out = torch.flip(out, axes)
        # Summing one pass at a time keeps memory at two outputs, not one per flip.
        total = out if total is None else total + out
    assert total is not None
    return total / len(combos)
