"""2D U-Net applied slice by slice, so the predictor can treat it as a 3D network.

The network is MONAI's ``BasicUNet`` with ``spatial_dims=2`` (double conv blocks, four
downsamplings). The wrapper subclasses it, so its state-dict keys are exactly those
of a plain 2D ``BasicUNet`` and existing 2D weights import unchanged.
"""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNet


class SliceUNet2D(BasicUNet):
    """``(B, C_in, z, y, x) -> (B, C_out, z, y, x)``: a 2D U-Net run on every z slice.

    z is folded into the batch, so all slices of a window go through the 2D net in
    one call; y and x must be multiples of 16.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(spatial_dims=2, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C_in, z, y, x) -> logits (B, C_out, z, y, x)."""
        if x.ndim != 5:
            raise ValueError(f"SliceUNet2D expects (B, C, z, y, x), got shape {tuple(x.shape)}")
        b, c, z, h, w = x.shape
        slices = x.permute(0, 2, 1, 3, 4).reshape(b * z, c, h, w)
        out = super().forward(slices)  # (B*z, C_out, y, x)
        return out.reshape(b, z, out.shape[1], h, w).permute(0, 2, 1, 3, 4).contiguous()
