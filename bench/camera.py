"""Camera photos for the photo benches (bench.photos, bench.gpu_decode), and Pillow's
decoding of them as the server does it on the CPU. numpy, Pillow and scikit-image only, so
that the GPU decode bench runs where neither tritonclient nor the service is installed."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image

SIZE = 224  # the model input the photos are decoded for


def camera_photos() -> list[bytes]:
    """Four real photographs (scikit-image) upscaled to 4000x3000 and re-encoded as JPEG
    (quality 90): 12 MP, as phones take them."""
    from skimage import data

    photos = []
    for name in ("astronaut", "chelsea", "coffee", "camera"):
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        buffer = io.BytesIO()
        image.resize((4000, 3000), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def decode(photo: bytes, scale: int | None) -> npt.NDArray[np.uint8]:
    """scale None: full decoding; k: DCT scaling to >= k x the target, then the resize."""
    image = Image.open(io.BytesIO(photo))
    if scale is not None:
        image.draft("RGB", (scale * SIZE, scale * SIZE))
    resized = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)
