"""3D U-Net after Çiçek et al. (MICCAI 2016), small and depth-configurable.

Each level is a double 3x3x3 convolution (conv -> norm -> ReLU, twice); the encoder
goes down with 2x2x2 max pooling, the decoder goes up with 2x2x2 transposed
convolutions and concatenates the skip connection before its double convolution.
With ``len(features) = L`` levels, every input side must be a multiple of ``2**(L-1)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

_NORMS = ("instance", "batch", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.Identity()


class DoubleConv(nn.Module):
    """(conv3x3x3 -> norm -> ReLU) x 2: ``(B, c_in, z, y, x) -> (B, c_out, z, y, x)``."""

    def __init__(self, c_in: int, c_out: int, norm: str, dropout: float) -> None:
        super().__init__()
        bias = norm == "none"  # a bias before a norm layer is cancelled by it
        self.block = nn.Sequential(
            nn.Conv3d(c_in, c_out, 3, padding=1, bias=bias),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
            nn.Dropout3d(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv3d(c_out, c_out, 3, padding=1, bias=bias),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UNet3D(nn.Module):
    """3D U-Net: ``(B, in_channels, z, y, x) -> (B, out_channels, z, y, x)`` logits.

    Args:
        in_channels: number of input modalities.
        out_channels: number of output channels (classes incl. background for softmax).
        features: channels per level, e.g. ``(16, 32, 64, 128)`` (at least 2 levels).
        norm: ``"instance"`` (default; robust with batch size 1), ``"batch"`` or ``"none"``.
        dropout: channel dropout inside each double conv (training only).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (16, 32, 64, 128),
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ValueError("features must list at least 2 positive channel counts")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {', '.join(_NORMS)}, got {norm!r}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError("in_channels and out_channels must be positive")
        self.depth = len(features)
        self.encoders = nn.ModuleList()
        c_prev = in_channels
        for f in features:
            self.encoders.append(DoubleConv(c_prev, f, norm, dropout))
            c_prev = f
        self.pool = nn.MaxPool3d(2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(len(features) - 2, -1, -1):
            self.ups.append(nn.ConvTranspose3d(features[level + 1], features[level], 2, stride=2))
            self.decoders.append(DoubleConv(2 * features[level], features[level], norm, dropout))
        self.head = nn.Conv3d(features[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C_in, z, y, x), sides multiples of ``2**(depth-1)`` -> (B, C_out, z, y, x)."""
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < self.depth - 1:
                skips.append(x)
                x = self.pool(x)
        for up, dec in zip(self.ups, self.decoders):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)
