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


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with batch norm, identity (or 1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = torch.relu(out + self.shortcut(x))
        return result


class ResNet18(nn.Module):
    """ResNet-18 (four stages of two basic blocks) for 3 x H x W images."""

    def __init__(self, classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        stages: list[nn.Module] = []
        channels = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(channels, width, stride), BasicBlock(width, width)]
            channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.stages(self.stem(image)))
        return logits
