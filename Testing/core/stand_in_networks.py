"""Fixed stand-in networks for tests: known outputs, and a count of the windows they saw."""

from __future__ import annotations

import torch
from torch import nn


class MeanThresholdNet(nn.Module):
    """Fixed stand-in network: logits (0, gain * (mean3x3x3(x) - t)); counts windows it sees."""

    def __init__(self, threshold: float = 0.5, gain: float = 8.0) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, kernel_size=3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1] = gain / 27.0
            self.conv.bias.copy_(torch.tensor([0.0, -gain * threshold]))
        self.windows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return self.conv(x)
