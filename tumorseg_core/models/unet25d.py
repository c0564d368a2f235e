"""2.5D U-Net: a 2D U-Net that sees ``2k+1`` neighbouring slices as input channels.

The network is MONAI's ``BasicUNet`` with ``spatial_dims=2`` whose input channels are the
image channels of slices ``z-k .. z+k`` (``k = context``); it predicts slice ``z``. The
wrapper keeps the registry's 3D contract ``(B, C, z, y, x) -> (B, K, z, y, x)``: every z
slice of the window is predicted from its neighbours, the window's z borders padded by
repeating the edge slice (so training and the sliding-window predictor need nothing new).
Slice mode (:mod:`tumorseg_core.inference.slice_mode`) runs the plain 2D network on one
stack of slices with :class:`CentreSliceNet`.

Channel order of the 2D input: channel ``c * (2k + 1) + m`` is image channel ``c`` of slice
``z - k + m`` (slices nearest the head-foot direction's low end first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet


class StackUNet25D(BasicUNet):
    """``(B, C, z, y, x) -> (B, K, z, y, x)``: each z slice predicted from slices ``z-k..z+k``.

    Args:
        in_channels: image channels C per slice (the 2D net gets ``C * (2k + 1)``).
        context: k, the neighbours on each side.
        **kwargs: ``BasicUNet`` arguments (out_channels, features, act, norm, ...).

    y and x must be multiples of 16.
    """

    def __init__(self, in_channels: int = 1, context: int = 2, **kwargs) -> None:
        if int(context) < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        super().__init__(spatial_dims=2, in_channels=int(in_channels) * (2 * int(context) + 1), **kwargs)
        self.image_channels = int(in_channels)
        self.context = int(context)

    def forward_stack(self, stacks: torch.Tensor) -> torch.Tensor:
        """``stacks``: (N, C * (2k + 1), y, x) -> logits of the centre slices (N, K, y, x)."""
        return super().forward(stacks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C, z, y, x) -> logits (B, K, z, y, x); in training mode (B, K, z - 2k, y, x)
        when ``z > 2k``.

        Training mode predicts only the slices whose 2k neighbours are all real (``k .. z-k-1``),
        as slice mode sees them: replicated edge slices would teach the network a context it
        meets only at a volume's first and last k slices. The trainer scores such an output on
        the label's centre slices. Evaluation mode (validation, sliding window) predicts every
        slice, the window's borders padded by repeating the edge slice.
        """
        if x.ndim != 5:
            raise ValueError(f"StackUNet25D expects (B, C, z, y, x), got shape {tuple(x.shape)}")
        b, c, z, h, w = x.shape
        k = self.context
        padded = x if (self.training and z > 2 * k) or not k else F.pad(x, (0, 0, 0, 0, k, k), mode="replicate")
        n = padded.shape[2] - 2 * k  # slices predicted
        # (B, C, n, y, x, 2k+1) -> (B, n, C, 2k+1, y, x) -> (B*n, C*(2k+1), y, x)
        stacks = padded.unfold(2, 2 * k + 1, 1).permute(0, 2, 1, 5, 3, 4).reshape(b * n, c * (2 * k + 1), h, w)
        out = self.forward_stack(stacks)
        return out.reshape(b, n, out.shape[1], h, w).permute(0, 2, 1, 3, 4).contiguous()


class CentreSliceNet(torch.nn.Module):
    """The 2D network of a :class:`StackUNet25D` in the predictor's 3D shape, for export:
    ``(B, C * (2k + 1), 1, y, x) -> (B, K, 1, y, x)`` (one stack per batch item, z = 1)."""

    def __init__(self, net: StackUNet25D) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C * (2k + 1), 1, y, x) -> logits (B, K, 1, y, x)."""
        return self.net.forward_stack(x[:, :, 0]).unsqueeze(2)
