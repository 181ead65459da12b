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

`--decode gpu` (issue 19, on a CUDA machine with onnxruntime-gpu and nvImageCodec; bench/gpu.sh
runs it): the model is served with `decode: gpu` and the in-process pipeline decodes the same
way (nvImageCodec + the resize graph into rows on the device, service/images/device_decode.py), and
the decoding table gains its row. `--model resnet50` takes the ResNet-50 written without torch
(bench/resnet50.py) instead of bench.run's ResNet-18 (bench/out/repository, torch needed).
Both pipelines run the served graph (preprocessing spliced in), fed uint8 pixels.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import tritonclient.grpc.aio as triton_aio

from bench.camera import SIZE, camera_photos, decode
from bench.overhead import Process
from bench.resnet50 import write_resnet50
from bench.run import OUT
from service.configuration.model_config import parse_model_overrides
from service.images.decode import read_headers
from service.images.device_decode import DeviceImageDecoder
from service.images.preprocess import BoundPreprocess
from service.runtime.device_rows import DeviceRows
from service.runtime.onnx_runner import CUDA, OnnxRunner, default_intra_op_threads
from service.serving.loader import preprocessed_graph

RESNET18 = OUT / "repository" / "resnet18" / "1" / "model.onnx"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
PREPROCESSING = {
    "mode": "standardize",
    "mean": MEAN,
    "std": STD,
    "layout": "NHWC",
    "resize": [SIZE, SIZE],
}
BATCH = 8  # the in-process pipeline's batch


def config_text(decode: str) -> str:
    import yaml

    return yaml.safe_dump({"max_batch_size": 32, "decode": decode, "preprocessing": PREPROCESSING})


class Pipeline:
    """The served graph (preprocessing spliced in) and the decoding the server does."""

    def __init__(self, model: Path, decode: str) -> None:
        overrides = parse_model_overrides("photos", {"preprocessing": PREPROCESSING})
        prepared = preprocessed_graph("photos", model, overrides)
        self.pre: BoundPreprocess = prepared.preprocess
        self.runner = OnnxRunner(model, model_bytes=prepared.graph)
        if decode == "gpu" and self.runner.provider != CUDA:
            raise ValueError(
                "--decode gpu: the model does not run on CUDA here (onnxruntime-gpu and a GPU "
                "are needed; the served model would not load)"
            )
        self.device_decoder = DeviceImageDecoder(self.pre, 0) if decode == "gpu" else None

    def top(self, pixels: npt.NDArray[np.uint8] | DeviceRows) -> npt.NDArray[np.int64]:
        logits = self.runner.run({"image": pixels}, ["logits"])[0]
        top: npt.NDArray[np.int64] = logits.argmax(axis=1)
        return top

    def decode_batch(self, photos: list[bytes], pool: ThreadPoolExecutor) -> Any:
        """One batch as the server decodes it: Pillow (DCT scaling >= 2x) a row per task,
        or one call of the device pipeline."""
        if self.device_decoder is not None:
            headers = read_headers(self.pre, photos)
            return pool.submit(self.device_decoder.decode, photos, headers)
        rows = [pool.submit(decode, photo, 2) for photo in photos]
        return pool.submit(lambda: np.stack([row.result() for row in rows]))


def decoding_table(photos: list[bytes], pipeline: Pipeline) -> tuple[float, float]:
    """Prints ms per photo and agreement by method; returns (full ms, served method's ms)."""
    methods: dict[str, Any] = {
        "full decoding": lambda p: decode(p, None),
        "DCT scaling >= 1x": lambda p: decode(p, 1),
        "DCT scaling >= 2x (decode: cpu)": lambda p: decode(p, 2),
    }
    served = "DCT scaling >= 2x (decode: cpu)"
    device_decoder = pipeline.device_decoder
    if device_decoder is not None:
        served = f"nvImageCodec + resize graph on {device_decoder.device_label} (decode: gpu)"
        pre = pipeline.pre
        methods[served] = lambda p: device_decoder.decode([p], read_headers(pre, [p])).to_host()[0]
    full = np.stack([decode(p, None) for p in photos])
    full_top = pipeline.top(full)
    print("| method | ms per 12 MP photo | max pixel diff | mean diff | argmax agrees |")
    print("|---|---|---|---|---|")
    ms: dict[str, float] = {}
    for label, method in methods.items():
        times = []
        for _ in range(3):
            for photo in photos:
                began = time.perf_counter()
                method(photo)
                times.append((time.perf_counter() - began) * 1e3)
        ms[label] = statistics.median(times)
        pixels = np.stack([method(p) for p in photos])
        diff = np.abs(pixels.astype(int) - full.astype(int))
        top = pipeline.top(pixels)
        print(f"| {label} | {ms[label]:.1f} | {diff.max()} | {diff.mean():.2f} | "
              f"{int((top == full_top).sum())}/{len(photos)} |")  # fmt: skip
    return ms["full decoding"], ms[served]


def budget_check_us(photos: list[bytes]) -> float:
    """The decode budget's header pass over a request of 16 photos (nothing decoded)."""
    from service.configuration.model_config import TensorSpec
    from service.images.preprocess import bind, parse_preprocessing

    spec = parse_preprocessing("resnet18", {"mode": "normalize"})
    pre = bind("resnet18", spec, (TensorSpec("image", "FP32", (3, SIZE, SIZE)),), True)
    rows = [photos[i % len(photos)] for i in range(16)]
    runs = []
    for _ in range(20):
        began = time.perf_counter()
        read_headers(pre, rows, 10**12)
        runs.append((time.perf_counter() - began) * 1e6)
    return statistics.median(runs)


def in_process_rate(photos: list[bytes], pipeline: Pipeline, seconds: float) -> float:
    """Photos/s of the server's decoding (a pool of every core's threads) + onnxruntime at
    batch 8, pipelined: the next batch decodes while this one computes."""
    pool = ThreadPoolExecutor(default_intra_op_threads(1))
    done, began = 0, time.perf_counter()
    batch = [photos[i % len(photos)] for i in range(BATCH)]
    pending = pipeline.decode_batch(batch, pool)
    while time.perf_counter() - began < seconds:
        pixels = pending.result()
        pending = pipeline.decode_batch(batch, pool)
        pipeline.top(pixels)
        done += len(batch)
    pending.result()
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


def model_file(name: str) -> Path | None:
    if name == "resnet50":  # written here, no torch
        folder = OUT / "photos-resnet50"
        write_resnet50(folder, np.float32, max_batch_size=32)
        return folder / "1" / "model.onnx"
    return RESNET18 if RESNET18.exists() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--model", choices=("resnet18", "resnet50"), default="resnet18")
    parser.add_argument("--decode", choices=("cpu", "gpu"), default="cpu")
    args = parser.parse_args()
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None and CUDA in ort.get_available_providers():
        preload()
    model = model_file(args.model)
    if model is None:
        print(f"{RESNET18} is missing: run `python -m bench.run` first", file=sys.stderr)
        return 2
    try:
        pipeline = Pipeline(model, args.decode)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    photos = camera_photos()
    print(f"photos: {len(photos)} JPEGs of 4000x3000, {sum(map(len, photos)) / 4e6:.1f} MB each; "
          f"{args.model} on {pipeline.runner.provider}, decode: {args.decode}")  # fmt: skip
    full_ms, served_ms = decoding_table(photos, pipeline)
    print(f"\ndecode budget check, 16 photos, headers only: {budget_check_us(photos):.0f} us")
    repository = OUT / "photos"
    if repository.exists():
        shutil.rmtree(repository)
    (repository / "resnet18" / "1").mkdir(parents=True)
    shutil.copy(model, repository / "resnet18" / "1" / "model.onnx")
    (repository / "resnet18" / "config.yaml").write_text(config_text(args.decode))
    baseline = in_process_rate(photos, pipeline, args.seconds)
    pipeline.runner.close()
    command = [sys.executable, "-m", "service", "serve", "--model-repository", str(repository),
               "--port", "0", "--no-metrics", "--no-http"]  # fmt: skip
    server = Process(command, "cnnserve listening on ")
    rates: dict[int, Any] = {}
    try:
        for concurrency in (8, 32):
            rates[concurrency] = asyncio.run(
                served_rate(server.address, photos, concurrency, args.seconds)
            )
    finally:
        server.stop()
    print(f"\nin-process pipeline (decode: {args.decode} + onnxruntime, batch {BATCH}): "
          f"{baseline:.1f} photos/s")  # fmt: skip
    for concurrency, rate in rates.items():
        print(f"served c={concurrency}: {rate:.1f} photos/s ({rate / baseline:.2f}x)")
    ok = served_ms <= full_ms / 3 and rates[32] >= 0.8 * baseline
    print(f"criteria: decode <= 1/3 of full ({served_ms:.1f} vs {full_ms:.1f} ms), served c=32 "
          f">= 0.8x in-process: {'pass' if ok else 'FAIL'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
