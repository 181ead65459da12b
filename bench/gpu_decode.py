"""`python -m bench.gpu_decode [--allow-cpu]`: 12 MP camera JPEGs decoded by nvImageCodec on
the GPU against Pillow on the CPU, needing only nvImageCodec, numpy, Pillow and
scikit-image (no onnxruntime-gpu): the part of `decode: gpu` that a machine without
onnxruntime-gpu can measure (the lent H200 has CUDA 13 and a CPU onnxruntime; the
onnxruntime-gpu wheel, 256 MB, is over what a call may carry; nvImageCodec for CUDA 13 and
nvJPEG are 29 MB: bench/README.md, "GPU").

Photos: bench.photos' four (scikit-image photographs upscaled to 4000x3000, JPEG q 90).
Methods, ms per photo (median of 3 passes): Pillow full decoding; Pillow at the DCT scale
>= 2x of 224x224 (`decode: cpu`, what the server does on the CPU); nvImageCodec one photo a
call and 8 and 32 photos a call (full size, on the device, waited for by copying each call's
last image back; the device-side
resize of `decode: gpu` is onnxruntime's and is not timed here). Agreement: max and mean
difference of nvImageCodec's full-size pixels against Pillow's full decoding.
Criterion: nvImageCodec at 32 photos a call <= 1/3 of Pillow's `decode: cpu` ms per photo;
exits 1 when it fails, 2 when nvImageCodec cannot use a GPU (`--allow-cpu` runs its CPU
backend instead, to check the script).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from bench.camera import SIZE, camera_photos, decode


def per_photo_ms(photos: list[bytes], call: Callable[[list[bytes]], object], batch: int) -> float:
    """Median over 3 passes of the ms per photo when `call` takes `batch` photos at once."""
    rows = [photos[i % len(photos)] for i in range(max(batch, len(photos)))]
    passes = []
    for _ in range(3):
        began = time.perf_counter()
        for start in range(0, len(rows), batch):
            call(rows[start : start + batch])
        passes.append((time.perf_counter() - began) * 1e3 / len(rows))
    return statistics.median(passes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--allow-cpu", action="store_true", help="nvImageCodec's CPU backend")
    args = parser.parse_args()
    try:
        from nvidia import nvimgcodec
    except ImportError as exc:
        print(f"nvImageCodec is not installed: {exc}", file=sys.stderr)
        return 2
    codec: Any = nvimgcodec
    try:
        if args.allow_cpu:
            decoder = codec.Decoder(
                device_id=codec.NVIMGCODEC_DEVICE_CPU_ONLY,
                backends=[codec.Backend(codec.CPU_ONLY)],
            )
        else:
            gpu_backends = [codec.Backend(codec.GPU_ONLY), codec.Backend(codec.HW_GPU_ONLY)]
            decoder = codec.Decoder(backends=gpu_backends)
    except RuntimeError as exc:  # no CUDA device or driver
        print(f"nvImageCodec cannot start on a GPU here ({exc}); --allow-cpu checks the "
              "script on its CPU backend", file=sys.stderr)  # fmt: skip
        return 2
    params = codec.DecodeParams(color_spec=codec.ColorSpec.SRGB, apply_exif_orientation=False)
    photos = camera_photos()

    def on_device(batch: list[bytes]) -> list[Any]:
        images = decoder.decode(batch, params=params)
        if any(image is None for image in images):
            raise RuntimeError("nvImageCodec could not decode a photo with this backend")
        # Wait for the device: the results are ordered on one stream, so copying the last
        # image back waits for all of them (one copy a call: ~1.5 ms for 36 MB at 25 GB/s,
        # paid by every photo at 1 a call, a 32nd of it at 32).
        images[-1].cpu()
        return list(images)

    try:
        first = on_device(photos[:1])[0]
    except RuntimeError as exc:
        print(f"{exc}: no usable GPU backend (pass --allow-cpu to check the script)",
              file=sys.stderr)  # fmt: skip
        return 2
    where = "CPU backend" if args.allow_cpu else f"GPU, buffer {first.buffer_kind}"
    print(f"photos: {len(photos)} JPEGs of 4000x3000; nvImageCodec on the {where}")
    rows = {
        "Pillow, full decoding + resize": per_photo_ms(
            photos, lambda b: [decode(p, None) for p in b], 1
        ),
        "Pillow, DCT scale >= 2x + resize (decode: cpu)": per_photo_ms(
            photos, lambda b: [decode(p, 2) for p in b], 1
        ),
    }
    for batch in (1, 8, 32):
        rows[f"nvImageCodec, {batch} a call, full size"] = per_photo_ms(photos, on_device, batch)
    diffs = []
    for photo, image in zip(photos, on_device(photos), strict=True):
        full = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"), dtype=np.int16)
        diffs.append(np.abs(np.asarray(image.cpu(), dtype=np.int16) - full))
    print("| method | ms per 12 MP photo |")
    print("|---|---|")
    for label, ms in rows.items():
        print(f"| {label} | {ms:.2f} |")
    print(f"nvImageCodec vs Pillow, full size: max diff {max(int(d.max()) for d in diffs)}, "
          f"mean {statistics.mean(float(d.mean()) for d in diffs):.3f} (resize to {SIZE} "
          "not included)")  # fmt: skip
    cpu_ms = rows["Pillow, DCT scale >= 2x + resize (decode: cpu)"]
    gpu_ms = rows["nvImageCodec, 32 a call, full size"]
    ok = gpu_ms <= cpu_ms / 3
    print(f"criterion: nvImageCodec at 32 a call <= 1/3 of decode: cpu ({gpu_ms:.2f} vs "
          f"{cpu_ms:.2f} ms): {'pass' if ok else 'FAIL'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
