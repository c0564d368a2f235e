"""V-Net (Milletari et al. 2016) from MONAI: ``(B, C_in, z, y, x) -> (B, C_out, z, y, x)``.

MONAI's VNet has a fixed depth of four downsamplings (sides must be multiples of 16),
uses BatchNorm, and repeats the input 16/in_channels times in its first stage, so
``in_channels`` must divide 16.
"""

from __future__ import annotations

from typing import Any

from monai.networks.nets import VNet
from torch import nn

from tumorseg_core.errors import ModelPackageError


def build_vnet(in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    """Build a 3D MONAI VNet; ``in_channels`` must be 1, 2, 4, 8 or 16."""
    if in_channels < 1 or 16 % in_channels != 0:
        raise ModelPackageError(f"vnet needs in_channels dividing 16 (1, 2, 4, 8, 16), got {in_channels}")
    return VNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **kwargs)
