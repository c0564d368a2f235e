"""SegResNet (Myronenko, BraTS 2018) from MONAI: ``(B, C_in, z, y, x) -> (B, C_out, z, y, x)``.

Without the VAE branch. Sides must be multiples of ``2**(len(blocks_down) - 1)``;
GroupNorm needs ``init_filters`` divisible by its number of groups.
"""

from __future__ import annotations

from typing import Any

from monai.networks.nets import SegResNet
from torch import nn


def build_segresnet(**kwargs: Any) -> nn.Module:
    """Build a 3D MONAI SegResNet from the registry's checked kwargs."""
    return SegResNet(spatial_dims=3, **kwargs)
