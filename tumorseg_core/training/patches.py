"""torch Datasets over cached cases: whole cases (validation) and augmented patches (training).

Reproducibility: a training sample is fully determined by ``(seed, epoch, index)``. Its
case is drawn from ``numpy.random.default_rng([seed, epoch, index])`` and the MONAI
transforms are reseeded from the same generator before they run, so the sample does
not depend on worker processes, on which rank draws it, or on whether the run was
resumed from a checkpoint.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tumorseg_core.training.cache import CachedCase
from tumorseg_core.training.foreground_crop import COORDS_KEY, HARD_KEY, foreground_coordinates


class CaseDataset(Dataset):
    """Whole preprocessed cases: item ``i`` is ``{"id": str, "image": (C,z,y,x) float32,
    "label": (1,z,y,x) uint8}`` as numpy arrays (copied out of the memory map)."""

    def __init__(self, cases: Sequence[CachedCase]) -> None:
        self.cases = list(cases)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        arrays = self.cases[index].load(mmap=False)
        return {"id": self.cases[index].id, **arrays}


class PatchDataset(Dataset):
    """``length`` augmented training patches per epoch.

    Item ``i`` is ``{"image": float32 tensor (C, *patch_zyx), "label": float tensor
    (1, *patch_zyx)}``. Call :meth:`set_epoch` before each epoch (the DataLoader must be
    rebuilt or non-persistent so workers see the new epoch). ``hard_coords``: per case,
    (N, 4) hard-negative voxels for the crop (see ``hard_negatives.mine_hard_negatives``).
    """

    def __init__(self, cases: Sequence[CachedCase], transforms: Any, length: int, seed: int,
                 per_lesion: bool = False, hard_coords: Sequence[np.ndarray] | None = None) -> None:
        if not cases:
            raise ValueError("PatchDataset needs at least one case")
        self.cases = list(cases)
        self.transforms = transforms
        self.length = int(length)
        self.seed = int(seed)
        self.epoch = 0
        # Found once here (workers inherit them), so no sample scans a whole label.
        self.fg_coords = [foreground_coordinates(c.load(mmap=True)["label"], seed=i, per_lesion=per_lesion)
                          for i, c in enumerate(self.cases)]
        if hard_coords is not None and len(hard_coords) != len(self.cases):
            raise ValueError(f"{len(hard_coords)} hard-negative arrays for {len(self.cases)} cases")
        self.hard_coords = None if hard_coords is None else list(hard_coords)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        which = int(rng.integers(len(self.cases)))
        arrays = self.cases[which].load(mmap=True)
        # The crop copies what it needs out of the read-only memory map.
        data = {"image": arrays["image"], "label": arrays["label"], COORDS_KEY: self.fg_coords[which]}
        if self.hard_coords is not None:
            data[HARD_KEY] = self.hard_coords[which]
        self.transforms.set_random_state(seed=int(rng.integers(2**31 - 1)))
        out = self.transforms(data)
        sample = out[0] if isinstance(out, list) else out
        return {"image": plain_tensor(sample["image"]), "label": plain_tensor(sample["label"])}


def plain_tensor(array: Any) -> torch.Tensor:
    """``array`` as a plain ``torch.Tensor`` (no copy): MONAI transforms may return a ``MetaTensor``,
    whose Python ``__torch_function__`` would then wrap every operation of the training step
    (forward, loss and backward: ~10-15 % of a CPU step)."""
    tensor = torch.as_tensor(array)
    return tensor if type(tensor) is torch.Tensor else tensor.as_subclass(torch.Tensor)
