"""Training-time augmentation on batches of model inputs (float NCHW), all optional.

Geometric changes (rotation, scaling, translation, crop) are one affine resampling; flips
are off unless asked because they change some labels (a mirrored 2 is not a digit);
brightness, contrast and noise act on the normalized values. Deterministic for a given
torch.Generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional


@dataclass(frozen=True)
class Augmentation:
    rotation_deg: float = 0.0  # uniform in [-r, r]
    scale: float = 0.0  # zoom factor uniform in [1 - s, 1 + s]
    translate: float = 0.0  # shift, as a fraction of the image size, in [-t, t]
    crop: float = 0.0  # random crop of (1 - c) of the image, resized back (a zoom-in)
    flip: bool = False  # horizontal, half the time
    brightness: float = 0.0  # added, uniform in [-b, b] (normalized units)
    contrast: float = 0.0  # around each image's mean, factor in [1 - c, 1 + c]
    noise_std: float = 0.0  # Gaussian, normalized units

    @property
    def active(self) -> bool:
        return self != Augmentation()

    def scaled(self, strength: float) -> Augmentation:
        """Every magnitude times `strength` (flip kept): one knob for a search."""
        return Augmentation(
            self.rotation_deg * strength,
            self.scale * strength,
            self.translate * strength,
            self.crop * strength,
            self.flip,
            self.brightness * strength,
            self.contrast * strength,
            self.noise_std * strength,
        )


DIGITS_AUGMENTATION = Augmentation(rotation_deg=10, scale=0.1, translate=0.1)


def augment(x: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> torch.Tensor:
    if not aug.active:
        return x
    n = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    if aug.rotation_deg or aug.scale or aug.translate or aug.crop:
        angle = uniform(-aug.rotation_deg, aug.rotation_deg) * math.pi / 180
        zoom = uniform(1 - aug.scale, 1 + aug.scale) / (1 - uniform(0, aug.crop))
        shift_x = uniform(-aug.translate, aug.translate) * 2  # grid units span [-1, 1]
        shift_y = uniform(-aug.translate, aug.translate) * 2
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
        )
        grid = functional.affine_grid(theta, list(x.shape), align_corners=False)
        x = functional.grid_sample(x, grid, padding_mode="border", align_corners=False)
    if aug.flip:
        flipped = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(3), x)
    if aug.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * uniform(1 - aug.contrast, 1 + aug.contrast)[:, None, None, None] + mean
    if aug.brightness:
        x = x + uniform(-aug.brightness, aug.brightness)[:, None, None, None]
    if aug.noise_std:
        x = x + torch.randn(x.shape, generator=generator) * aug.noise_std
    return x
