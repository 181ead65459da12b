"""CNN architectures of the course's pattern: [(CONV-RELU)*N - POOL?]*M - (FC-RELU)*K - FC.

This first version builds that pattern from a compact spec; a later issue adds per-layer
options, the layer-size check and a ResNet-style family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CnnSpec:
    in_channels: int
    height: int
    width: int
    blocks: tuple[tuple[int, ...], ...]  # per block: the out-channels of each 3x3 conv
    pool: tuple[bool, ...]  # per block: 2x2 max-pool at its end
    hidden: tuple[int, ...]  # FC-ReLU widths
    classes: int
    dropout: float = 0.25


DIGITS_SPEC = CnnSpec(
    in_channels=1,
    height=8,
    width=8,
    blocks=((32, 32), (64,)),
    pool=(True, True),
    hidden=(128,),
    classes=10,
)


class Cnn(nn.Module):
    """Logits in training; `with_softmax` adds the probabilities the served model returns."""

    def __init__(self, spec: CnnSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, height, width = spec.in_channels, spec.height, spec.width
        for convs, pool in zip(spec.blocks, spec.pool, strict=True):
            for out in convs:
                layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU()]
                channels = out
            if pool:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
        self.features = nn.Sequential(*layers)
        fc: list[nn.Module] = [nn.Flatten()]
        width_in = channels * height * width
        for hidden in spec.hidden:
            fc += [nn.Linear(width_in, hidden), nn.ReLU(), nn.Dropout(spec.dropout)]
            width_in = hidden
        fc.append(nn.Linear(width_in, spec.classes))
        self.classifier = nn.Sequential(*fc)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.features(image))
        return logits


class WithSoftmax(nn.Module):
    """The exported graph: class probabilities, so clients get scores that sum to 1."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(image), dim=1)
