"""Small torch modules for `cnnserve export onnx` tests (imported as package.module:name)."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(image).mean(dim=(2, 3))
        return torch.softmax(self.head(pooled), dim=1)


class NeedsEightChannels(nn.Module):
    """Exports only for 8-channel input: a wrong --input-shape must be explained."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 2, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(image)
        return out


not_a_module = 42
