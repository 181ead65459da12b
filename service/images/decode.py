"""Decoding encoded images (PNG, JPEG) into the uint8 pixels the preprocessing graph takes.

Pillow, not OpenCV: it is a small pure-wheel dependency (opencv-python-headless is ~50 MB
and brings its own FFmpeg), it reads the image size from the header before decoding (so the
decompression-bomb check costs nothing), and it is what most training pipelines
(torchvision) decode with, so served pixels match training pixels.

Resizing: Pillow's bilinear filter, which widens its support when shrinking (antialiased),
straight to the model's H x W (no aspect-preserving crop). Colour: converted to the mode
the model declares (`color`: rgb, bgr or gray) whatever the file holds: CMYK and palette
images are converted, an alpha channel is dropped (as `Image.convert("RGB")` in training
pipelines does), 16-bit greyscale is scaled to 8 bits (not clipped). EXIF orientation is
not applied: the pixels are used as stored, as torchvision's PIL loader and
`decode_jpeg` (apply_exif_orientation=False) give them to training.

JPEG is decoded at a reduced size: libjpeg's DCT-domain scaling (Pillow's `draft`) at the
smallest scale (1/2, 1/4, 1/8) that stays >= twice the model's input size, then the same
resize. A 12-megapixel photo to 224x224: 104 ms -> 18 ms, max pixel difference 2 (mean
0.16) against full decoding; at >= 1x it was 13 ms but up to 9 levels apart
(bench/README.md, "Photos").

Decoding runs in threads (Pillow releases the GIL while decoding), never on the event loop;
each row is its own task, so one request's rows spread over the pool and other requests'
rows interleave with them. Before any decoding, the declared sizes of all rows (read from
the headers) are held against the request's decode budget (`read_headers`); the same pass
tells GPU decoding which rows are plain JPEGs (service/images/device_decode.py).
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from service.images.preprocess import BoundPreprocess
from service.tensors.errors import InvalidArgument

MAX_PIXELS = 40_000_000  # larger declared sizes are refused before decoding
MIN_SIDE = 2  # a 1-pixel-wide image carries no spatial information
FORMATS = ("PNG", "JPEG")


def _error(pre: BoundPreprocess, row: int, message: str) -> InvalidArgument:
    return InvalidArgument(f"input '{pre.input_name}' row {row}: {message}")


def _open(pre: BoundPreprocess, data: object, row: int) -> Image.Image:
    """The image's header, checked: a known format, a sane declared size (nothing decoded)."""
    if not isinstance(data, bytes):
        raise _error(pre, row, "expected encoded image bytes")
    if not data:
        raise _error(pre, row, "empty image (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _error(pre, row, f"not a decodable {' or '.join(FORMATS)} image") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise _error(
            pre, row, f"declared size {width}x{height} exceeds the {MAX_PIXELS:,}-pixel limit"
        )
    if min(width, height) < MIN_SIDE:
        image.close()
        raise _error(pre, row, f"image is {width}x{height}; each side needs >= {MIN_SIDE} px")
    return image


class ImageHeader(NamedTuple):
    """What one row's header declares (nothing decoded)."""

    format: str
    mode: str
    pixels: int

    @property
    def plain_jpeg(self) -> bool:
        """A JPEG stored as RGB or grey: what nvImageCodec decodes to the colours Pillow
        gives (CMYK and other JPEGs, PNG and the rest go through Pillow)."""
        return self.format == "JPEG" and self.mode in ("RGB", "L")


def read_headers(
    pre: BoundPreprocess, items: Sequence[object], budget: int | None = None
) -> list[ImageHeader]:
    """Every row's header, checked; the pixels they declare together over `budget` are
    refused before any decoding (a request of 16 large photos must not hold the decode
    threads)."""
    headers = []
    for row, item in enumerate(items):
        with _open(pre, item, row) as image:
            width, height = image.size
            headers.append(ImageHeader(image.format or "", image.mode, width * height))
    total = sum(header.pixels for header in headers)
    if budget is not None and total > budget:
        raise InvalidArgument(
            f"input '{pre.input_name}': the request's images declare {total:,} pixels, over "
            f"the decode budget of {budget:,} per request (--max-decode-pixels); send fewer "
            "or smaller images per request"
        )
    return headers


def _to_8bit(image: Image.Image, mode: str) -> Image.Image:
    """Decoded pixels in `mode` (L or RGB); 16-bit greyscale scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((wide >> 8).clip(0, 255).astype(np.uint8), "L")
    return image.convert(mode)


def decode_pixels(pre: BoundPreprocess, data: object, row: int) -> npt.NDArray[np.uint8]:
    """One encoded image -> uint8 pixels (H, W, C) at the input size, RGB or grey."""
    target_h, target_w = pre.image_size
    mode = "L" if pre.spec.color == "gray" else "RGB"
    with _open(pre, data, row) as image:
        if image.format == "JPEG":  # DCT-domain scaling, >= 2x the input size
            image.draft(mode if image.mode in ("RGB", "L") else None, (2 * target_w, 2 * target_h))
        try:
            converted = _to_8bit(image, mode)
        except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
            raise _error(pre, row, f"cannot decode image: {exc}") from None
    if converted.size != (target_w, target_h):
        converted = converted.resize((target_w, target_h), Image.Resampling.BILINEAR)
    pixels = np.asarray(converted, dtype=np.uint8)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def client_layout(pre: BoundPreprocess, pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(H, W, C) RGB or grey pixels in the colour order and layout clients send."""
    if pre.spec.color == "bgr":
        pixels = pixels[:, :, ::-1]
    if pre.spec.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels)


def decode_image(pre: BoundPreprocess, data: object, row: int) -> npt.NDArray[np.uint8]:
    """One encoded image -> uint8 pixels in the client layout (H, W, C) or (C, H, W)."""
    return client_layout(pre, decode_pixels(pre, data, row))


async def decode_rows(
    pre: BoundPreprocess, items: Sequence[object], pool: Executor
) -> npt.NDArray[np.uint8]:
    """Every row of a BYTES tensor decoded in `pool`, one task a row, stacked into one uint8
    batch; the first failing row's error is raised once every row has finished."""
    loop = asyncio.get_running_loop()
    rows = await asyncio.gather(
        *(
            loop.run_in_executor(pool, decode_image, pre, item, row)
            for row, item in enumerate(items)
        ),
        return_exceptions=True,
    )
    for result in rows:
        if isinstance(result, BaseException):
            raise result
    return np.stack(rows)  # type: ignore[arg-type]


def decode_batch(pre: BoundPreprocess, items: Sequence[object]) -> npt.NDArray[np.uint8]:
    """Every row decoded in this thread (tests, tools): the same pixels as decode_rows."""
    return np.stack([decode_image(pre, item, row) for row, item in enumerate(items)])
