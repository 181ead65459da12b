"""The preprocessing oracle, written from the README's formulas alone (it shares nothing with
service/images/preprocess.py's graph builder, so a mistake there cannot hide in both):

    normalize:   x' = x * scale
    center:      x' = x * scale - mean
    standardize: x' = (x * scale - mean) / std

`mean`/`std` per channel or one number; with per-image statistics they are measured on each
sample of the scaled pixels (over H, W per channel, or over C, H, W), and std is floored at
1/sqrt(N), N the number of values a statistic is taken over. Computed in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def expected_model_input(
    pixels: npt.NDArray[np.uint8],
    *,
    mode: str,
    scale: float = 1 / 255,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    statistics: str = "dataset",
    per_image: str = "channel",
    layout: str = "NHWC",
    model_layout: str = "NCHW",
) -> npt.NDArray[np.float64]:
    """uint8 pixels [N, ...] in the client's `layout` -> the model's input in its layout."""
    x = pixels.astype(np.float64)
    if layout != model_layout:  # NHWC <-> NCHW
        x = np.moveaxis(x, 3, 1) if layout == "NHWC" else np.moveaxis(x, 1, 3)
    if mode == "none":
        return x
    x = x * scale
    if mode == "normalize":
        return x
    channel_axis = 1 if model_layout == "NCHW" else 3
    if statistics == "dataset":
        per_channel = [1, 1, 1, 1]
        per_channel[channel_axis] = -1
        m = np.asarray(mean, np.float64).reshape(per_channel)
        s = np.asarray(std, np.float64).reshape(per_channel)
    else:
        spatial = tuple(a for a in (1, 2, 3) if a != channel_axis)
        axes = (1, 2, 3) if per_image == "image" else spatial
        count = int(np.prod([x.shape[a] for a in axes]))
        m = x.mean(axis=axes, keepdims=True)
        s = np.maximum(x.std(axis=axes, keepdims=True), 1 / np.sqrt(count))
    if mode == "center":
        return x - m
    return (x - m) / s
