"""CNN architectures of the course's pattern: [(CONV-RELU)*N - POOL?]*M - (FC-RELU)*K - FC,
built from a spec, and a ResNet-18-style network.

Every layer's output size follows (W - D(F-1) - 1 + 2P)/S + 1 (F filter, P padding, S
stride, D dilation; D = 1 gives the course's (W - F + 2P)/S + 1). `layer_sizes` works them
out before any weight exists and refuses a spec whose sizes do not come out as a positive
whole number, naming the layer and the numbers, so a bad spec fails before training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from export.card import LayerRow


class SpecError(ValueError):
    """An architecture spec whose layer sizes do not work out."""


@dataclass(frozen=True)
class ConvSpec:
    out_channels: int
    kernel: int = 3
    padding: int = 1
    stride: int = 1
    dilation: int = 1


@dataclass(frozen=True)
class BlockSpec:
    convs: tuple[ConvSpec, ...]
    pool: int = 2  # max-pool window and stride; 0 = no pooling


@dataclass(frozen=True)
class CnnSpec:
    in_channels: int
    height: int
    width: int
    blocks: tuple[BlockSpec, ...]
    hidden: tuple[int, ...]  # FC-ReLU widths
    classes: int
    batch_norm: bool = True  # after every conv (and FC-ReLU): a conv then has no bias
    dropout: float = 0.25  # after every FC-ReLU
    conv_dropout: float = 0.0  # 2-D dropout at the end of every block


def convs(*channels: int) -> tuple[ConvSpec, ...]:
    return tuple(ConvSpec(c) for c in channels)


# The default for digits: 8x8 -> 4x4 -> 2x2, batch norm, dropout in the classifier.
DIGITS_SPEC = CnnSpec(
    in_channels=1,
    height=8,
    width=8,
    blocks=(BlockSpec(convs(32, 32)), BlockSpec(convs(64, 64))),
    hidden=(128,),
    classes=10,
)


def _out(size: int, kernel: int, padding: int, stride: int, dilation: int, where: str) -> int:
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    formula = (
        f"(W - D(F-1) - 1 + 2P)/S + 1 = ({size} - {dilation}*({kernel}-1) - 1 + 2*{padding})"
        f"/{stride} + 1"
    )
    if span < 0:
        raise SpecError(f"{where}: {formula} < 1: the input ({size}) is smaller than the filter")
    if span % stride:
        raise SpecError(
            f"{where}: {formula} = {span / stride + 1:g} is not a whole number; change the "
            "padding or stride"
        )
    return span // stride + 1


def layer_sizes(spec: CnnSpec) -> list[tuple[str, int, int, int]]:
    """(layer, channels, height, width) after every conv and pool; raises SpecError."""
    if spec.classes < 2:
        raise SpecError(f"classes must be at least 2, got {spec.classes}")
    if not spec.blocks:
        raise SpecError("the spec has no conv blocks")
    sizes = []
    channels, height, width = spec.in_channels, spec.height, spec.width
    for b, block in enumerate(spec.blocks, 1):
        if not block.convs:
            raise SpecError(f"block {b} has no convolutions")
        for c, conv in enumerate(block.convs, 1):
            where = f"block {b} conv {c}"
            if (
                min(conv.out_channels, conv.kernel, conv.stride, conv.dilation) < 1
                or conv.padding < 0
            ):
                raise SpecError(f"{where}: channels, filter, stride and dilation must be >= 1")
            args = (conv.kernel, conv.padding, conv.stride, conv.dilation)
            height = _out(height, *args, where=f"{where} (height)")
            width = _out(width, *args, where=f"{where} (width)")
            channels = conv.out_channels
            sizes.append((where, channels, height, width))
        if block.pool:
            where = f"block {b} pool {block.pool}x{block.pool}"
            height = _out(height, block.pool, 0, block.pool, 1, where=f"{where} (height)")
            width = _out(width, block.pool, 0, block.pool, 1, where=f"{where} (width)")
            sizes.append((where, channels, height, width))
    return sizes


def describe(spec: CnnSpec) -> str:
    """One line: "[conv 32, conv 32, pool 2] [conv 64, conv 64, pool 2] - FC 128 - FC 10"."""
    blocks = " ".join(
        "[" + ", ".join([f"conv {c.out_channels}" for c in b.convs]
                        + ([f"pool {b.pool}"] if b.pool else [])) + "]"
        for b in spec.blocks
    )  # fmt: skip
    fc = "".join(f" - FC {h}" for h in spec.hidden) + f" - FC {spec.classes}"
    extras = ["batch norm"] if spec.batch_norm else []
    extras += [f"dropout {spec.dropout}"] if spec.dropout else []
    extras += [f"2-D dropout {spec.conv_dropout}"] if spec.conv_dropout else []
    return f"CNN {blocks}{fc}" + (f" ({', '.join(extras)})" if extras else "")


def architecture_table(spec: CnnSpec) -> list[LayerRow]:
    """The layers as a reader checks them: output size from `layer_sizes` (the course's
    formula) and parameter count (a conv's weights, its bias or its batch norm's scale and
    shift; an FC's weights and bias). The total equals the built model's (tested)."""
    rows: list[LayerRow] = [
        {"layer": "input", "output": f"{spec.in_channels} x {spec.height} x {spec.width}",
         "parameters": 0}
    ]  # fmt: skip
    sizes = iter(layer_sizes(spec))
    channels = spec.in_channels
    for block in spec.blocks:
        for conv in block.convs:
            where, out, height, width = next(sizes)
            weights = channels * out * conv.kernel * conv.kernel
            extra = 2 * out if spec.batch_norm else out  # BN scale and shift, or a bias
            name = (
                f"{where}: {conv.kernel}x{conv.kernel}, pad {conv.padding}, stride "
                f"{conv.stride}"
                + (f", dilation {conv.dilation}" if conv.dilation > 1 else "")
                + (" + BN" if spec.batch_norm else "")
                + " + ReLU"
            )
            rows.append({"layer": name, "output": f"{out} x {height} x {width}",
                         "parameters": weights + extra})  # fmt: skip
            channels = out
        if block.pool:
            where, out, height, width = next(sizes)
            rows.append({"layer": where, "output": f"{out} x {height} x {width}", "parameters": 0})
    _, out, height, width = layer_sizes(spec)[-1]
    width_in = out * height * width
    rows.append({"layer": "flatten", "output": str(width_in), "parameters": 0})
    for hidden in spec.hidden:
        rows.append({"layer": "FC + ReLU", "output": str(hidden),
                     "parameters": width_in * hidden + hidden})  # fmt: skip
        width_in = hidden
    rows.append({"layer": "FC (logits)", "output": str(spec.classes),
                 "parameters": width_in * spec.classes + spec.classes})  # fmt: skip
    return rows


class Cnn(nn.Module):
    """Logits in training; `WithSoftmax` adds the probabilities the served model returns."""

    def __init__(self, spec: CnnSpec) -> None:
        super().__init__()
        sizes = layer_sizes(spec)  # refuses an impossible spec before any weight exists
        self.spec = spec
        layers: list[nn.Module] = []
        channels = spec.in_channels
        for block in spec.blocks:
            for conv in block.convs:
                layers.append(
                    nn.Conv2d(
                        channels,
                        conv.out_channels,
                        conv.kernel,
                        conv.stride,
                        conv.padding,
                        conv.dilation,
                        bias=not spec.batch_norm,
                    )
                )
                if spec.batch_norm:
                    layers.append(nn.BatchNorm2d(conv.out_channels))
                layers.append(nn.ReLU())
                channels = conv.out_channels
            if block.pool:
                layers.append(nn.MaxPool2d(block.pool))
            if spec.conv_dropout:
                layers.append(nn.Dropout2d(spec.conv_dropout))
        self.features = nn.Sequential(*layers)
        _, channels, height, width = sizes[-1]
        fc: list[nn.Module] = [nn.Flatten()]
        width_in = channels * height * width
        for hidden in spec.hidden:
            fc += [nn.Linear(width_in, hidden), nn.ReLU()]
            if spec.dropout:
                fc.append(nn.Dropout(spec.dropout))
            width_in = hidden
        fc.append(nn.Linear(width_in, spec.classes))
        self.classifier = nn.Sequential(*fc)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.features(image))
        return logits

    def freeze_features(self) -> None:
        """Transfer learning: keep the conv backbone fixed, train only the classifier."""
        for parameter in self.features.parameters():
            parameter.requires_grad = False
        self._frozen = True
        self.features.eval()

    def train(self, mode: bool = True) -> Cnn:
        super().train(mode)
        if getattr(self, "_frozen", False):
            self.features.eval()  # frozen batch norm keeps its running statistics too
        return self


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
