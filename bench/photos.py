"""`python -m bench.photos`: camera photos at the model's speed?

Four real photographs (scikit-image's astronaut, chelsea, coffee, camera) upscaled to a
camera's 4000x3000 and re-encoded as JPEG (quality 90, ~1-3 MB each), then:
1. Decode ms per photo by method, to 224x224: full decoding + resize (what cnnserve did),
   JPEG DCT scaling at >= 1x the target, and at >= 2x (what cnnserve does), with the max and
   mean pixel difference against full decoding and argmax agreement of a ResNet-18
   (bench/out/repository, random weights: agreement measures how much the pixels move the
   logits, not accuracy).
2. Served photos/s: the ResNet-18 served with its preprocessing (BYTES input, the photos
   sent as they are), tritonclient.grpc.aio, c=8 and c=32, against the in-process pipeline
   (the same decoding in a thread pool of every core + onnxruntime at batch 8) in the same run.
Criteria (issue 19): served decoding <= 1/3 of full decoding's ms per photo; served
photos/s >= 0.8x the in-process pipeline at c=32. Exits 1 when one fails.
Needs bench/out/repository (`python -m bench.run` builds it; torch for the ResNet-18).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as triton_aio
from PIL import Image

from bench.overhead import Process
from bench.run import OUT
from service.runtime import OnnxRunner, default_intra_op_threads

RESNET = OUT / "repository" / "resnet18" / "1" / "model.onnx"
SIZE = 224
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CONFIG = f"""max_batch_size: 32
preprocessing:
  mode: standardize
  mean: {MEAN}
  std: {STD}
  layout: NHWC
  resize: [{SIZE}, {SIZE}]
"""


def camera_photos() -> list[bytes]:
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


def standardize(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    mean, std = np.asarray(MEAN, np.float32), np.asarray(STD, np.float32)
    scaled = pixels.astype(np.float32) / np.float32(255)
    result: npt.NDArray[np.float32] = ((scaled - mean) / std).transpose(0, 3, 1, 2).copy()
    return result


def decoding_table(photos: list[bytes], runner: OnnxRunner) -> tuple[float, float]:
    """Prints ms per photo and agreement by method; returns (full ms, served ms)."""
    methods = {"full decoding": None, "DCT scaling >= 1x": 1, "DCT scaling >= 2x (served)": 2}
    full = np.stack([decode(p, None) for p in photos])
    full_top = runner.run({"image": standardize(full)}, ["logits"])[0].argmax(axis=1)
    print("| method | ms per 12 MP photo | max pixel diff | mean diff | argmax agrees |")
    print("|---|---|---|---|---|")
    ms: dict[str, float] = {}
    for label, scale in methods.items():
        times = []
        for _ in range(3):
            for photo in photos:
                began = time.perf_counter()
                decode(photo, scale)
                times.append((time.perf_counter() - began) * 1e3)
        ms[label] = statistics.median(times)
        pixels = np.stack([decode(p, scale) for p in photos])
        diff = np.abs(pixels.astype(int) - full.astype(int))
        top = runner.run({"image": standardize(pixels)}, ["logits"])[0].argmax(axis=1)
        print(f"| {label} | {ms[label]:.1f} | {diff.max()} | {diff.mean():.2f} | "
              f"{int((top == full_top).sum())}/{len(photos)} |")  # fmt: skip
    return ms["full decoding"], ms["DCT scaling >= 2x (served)"]


def budget_check_us(photos: list[bytes]) -> float:
    """The decode budget's header pass over a request of 16 photos (nothing decoded)."""
    from service.config import TensorSpec
    from service.images import declared_pixels
    from service.preprocess import bind, parse_preprocessing

    spec = parse_preprocessing("resnet18", {"mode": "normalize"})
    pre = bind("resnet18", spec, (TensorSpec("image", "FP32", (3, SIZE, SIZE)),), True)
    rows = [photos[i % len(photos)] for i in range(16)]
    runs = []
    for _ in range(20):
        began = time.perf_counter()
        declared_pixels(pre, rows, 10**12)
        runs.append((time.perf_counter() - began) * 1e6)
    return statistics.median(runs)


def in_process_rate(photos: list[bytes], runner: OnnxRunner, seconds: float) -> float:
    """Photos/s of decode (every core's threads) + onnxruntime at batch 8, pipelined."""
    pool = ThreadPoolExecutor(default_intra_op_threads(1))
    done, began = 0, time.perf_counter()
    batch = [photos[i % len(photos)] for i in range(8)]
    pending = pool.map(lambda p: decode(p, 2), batch)
    while time.perf_counter() - began < seconds:
        pixels = np.stack(list(pending))
        pending = pool.map(lambda p: decode(p, 2), batch)  # the next batch decodes meanwhile
        runner.run({"image": standardize(pixels)}, ["logits"])
        done += len(batch)
    pool.shutdown()
    return done / (time.perf_counter() - began)


async def served_rate(address: str, photos: list[bytes], concurrency: int, seconds: float) -> float:
    client = triton_aio.InferenceServerClient(address)
    count, counting, stop = 0, False, False

    async def worker(index: int) -> None:
        nonlocal count
        tensor = triton_aio.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([photos[index % len(photos)]], dtype=np.object_))
        while not stop:
            await client.infer("resnet18", [tensor])
            count += counting

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    await asyncio.sleep(2.0)  # warm-up (pacing, not synchronisation)
    counting, began = True, time.perf_counter()
    await asyncio.sleep(seconds)
    rate = count / (time.perf_counter() - began)
    stop = True
    await asyncio.gather(*tasks)
    await client.close()
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if not RESNET.exists():
        print(f"{RESNET} is missing: run `python -m bench.run` first", file=sys.stderr)
        return 2
    photos = camera_photos()
    print(f"photos: {len(photos)} JPEGs of 4000x3000, {sum(map(len, photos)) / 4e6:.1f} MB each")
    runner = OnnxRunner(RESNET)
    full_ms, served_ms = decoding_table(photos, runner)
    print(f"\ndecode budget check, 16 photos, headers only: {budget_check_us(photos):.0f} us")
    repository = OUT / "photos"
    if repository.exists():
        shutil.rmtree(repository)
    (repository / "resnet18" / "1").mkdir(parents=True)
    shutil.copy(RESNET, repository / "resnet18" / "1" / "model.onnx")
    (repository / "resnet18" / "config.yaml").write_text(CONFIG)
    baseline = in_process_rate(photos, runner, args.seconds)
    runner.close()
    command = [sys.executable, "-m", "service", "serve", "--model-repository", str(repository),
               "--port", "0", "--no-metrics"]  # fmt: skip
    server = Process(command, "cnnserve listening on ")
    rates: dict[int, Any] = {}
    try:
        for concurrency in (8, 32):
            rates[concurrency] = asyncio.run(
                served_rate(server.address, photos, concurrency, args.seconds)
            )
    finally:
        server.stop()
    print(f"\nin-process pipeline (decode + onnxruntime, batch 8): {baseline:.1f} photos/s")
    for concurrency, rate in rates.items():
        print(f"served c={concurrency}: {rate:.1f} photos/s ({rate / baseline:.2f}x)")
    ok = served_ms <= full_ms / 3 and rates[32] >= 0.8 * baseline
    print(f"criteria: decode <= 1/3 of full ({served_ms:.1f} vs {full_ms:.1f} ms), served c=32 "
          f">= 0.8x in-process: {'pass' if ok else 'FAIL'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
