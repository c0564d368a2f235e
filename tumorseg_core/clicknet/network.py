"""The click network's architecture, defined once for training and for use.

``(B, CHANNELS, 40, 40, 40) -> (B, 1, 40, 40, 40)`` logits of the clicked lesion: a 4-level 3D U-Net
(:class:`tumorseg_core.models.unet3d.UNet3D`) with instance norm.
"""

from __future__ import annotations

from typing import Sequence

from tumorseg_core.clicknet.inputs import CHANNELS
from tumorseg_core.models.unet3d import UNet3D

FEATURES = (12, 24, 48, 96)


def build_network(features: Sequence[int] = FEATURES) -> UNet3D:
    return UNet3D(in_channels=CHANNELS, out_channels=1, features=features, norm="instance")
