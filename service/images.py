"""Decoding encoded images (PNG, JPEG) into the uint8 pixels the preprocessing graph takes.

Pillow, not OpenCV: it is a small pure-wheel dependency (opencv-python-headless is ~50 MB
and brings its own FFmpeg), it reads the image size from the header before decoding (so the
decompression-bomb check costs nothing), and it is what most training pipelines
(torchvision) decode with, so served pixels match training pixels.

Resizing: Pillow's bilinear filter, which widens its support when shrinking (antialiased),
straight to the model's H x W (no aspect-preserving crop). Colour: converted to the mode
the model declares (`color`: rgb, bgr or gray) whatever the file holds.
Decoding runs in threads (Pillow releases the GIL while decoding), never on the event loop.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from service.errors import InvalidArgument
from service.preprocess import BoundPreprocess

MAX_PIXELS = 40_000_000  # larger declared sizes are refused before decoding
MIN_SIDE = 2  # a 1-pixel-wide image carries no spatial information
FORMATS = ("PNG", "JPEG")


def _error(pre: BoundPreprocess, row: int, message: str) -> InvalidArgument:
    return InvalidArgument(f"input '{pre.input_name}' row {row}: {message}")


def decode_image(pre: BoundPreprocess, data: bytes, row: int) -> npt.NDArray[np.uint8]:
    """One encoded image -> uint8 pixels in the client layout (H, W, C) or (C, H, W)."""
    if not data:
        raise _error(pre, row, "empty image (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _error(pre, row, f"not a decodable {' or '.join(FORMATS)} image") from None
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise _error(
                pre, row, f"declared size {width}x{height} exceeds the {MAX_PIXELS:,}-pixel limit"
            )
        if min(width, height) < MIN_SIDE:
            raise _error(pre, row, f"image is {width}x{height}; each side needs >= {MIN_SIDE} px")
        try:
            converted = image.convert("L" if pre.spec.color == "gray" else "RGB")
        except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
            raise _error(pre, row, f"cannot decode image: {exc}") from None
    target_h, target_w = pre.image_size
    if converted.size != (target_w, target_h):
        converted = converted.resize((target_w, target_h), Image.Resampling.BILINEAR)
    pixels = np.asarray(converted, dtype=np.uint8)
    if pre.spec.color == "gray":
        pixels = pixels[:, :, None]
    elif pre.spec.color == "bgr":
        pixels = pixels[:, :, ::-1]
    if pre.spec.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels)


def decode_batch(pre: BoundPreprocess, items: Sequence[object]) -> npt.NDArray[np.uint8]:
    """Every row of a BYTES tensor, decoded once, stacked into one uint8 batch."""
    rows = []
    for row, item in enumerate(items):
        if not isinstance(item, bytes):
            raise _error(pre, row, "expected encoded image bytes")
        rows.append(decode_image(pre, item, row))
    return np.stack(rows)
