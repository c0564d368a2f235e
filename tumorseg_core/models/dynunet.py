"""DynUNet (MONAI's nnU-Net-style U-Net): ``(B, C_in, z, y, x) -> (B, C_out, z, y, x)``.

``kernel_size`` and ``strides`` list one entry per level (an int or ``[z, y, x]``),
``upsample_kernel_size`` one per level except the first. Deep supervision heads may
exist for training; in eval mode MONAI returns only the full-resolution output, so
the predictor always gets a single tensor.
"""

from __future__ import annotations

from typing import Any, Sequence

from monai.networks.nets import DynUNet
from torch import nn


def build_dynunet(
    kernel_size: Sequence[Any],
    strides: Sequence[Any],
    upsample_kernel_size: Sequence[Any],
    **kwargs: Any,
) -> nn.Module:
    """Build a 3D MONAI DynUNet; the per-level lists must agree in length."""
    if len(kernel_size) != len(strides) or len(upsample_kernel_size) != len(strides) - 1:
        raise ValueError(
            "dynunet needs len(kernel_size) == len(strides) and len(upsample_kernel_size) == len(strides) - 1"
        )
    return DynUNet(
        spatial_dims=3, kernel_size=list(kernel_size), strides=list(strides),
        upsample_kernel_size=list(upsample_kernel_size), **kwargs,
    )
