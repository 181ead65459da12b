"""`bench/gpu.sh` (= `python -m bench.gpu`): the GPU check, one command, no network.

On a machine with a CUDA GPU and a virtual environment holding onnxruntime-gpu and the dev
and gpu extras (nvImageCodec with nvJPEG; made where there is network; this script
downloads nothing):
1. runs the tests that exercise CUDA (they skip on a CPU build of onnxruntime);
2. writes a ResNet-50 (bench/resnet50.py, no torch) in fp32 and fp16;
3. in-process onnxruntime CUDA EP with the server's session settings (OnnxRunner, IO
   binding) at batch 1..64: the best images/s;
4. cnnserve serving both on a loopback port (batch-1 requests from bench/loadgen.py at
   concurrency 1, 8, 32, 128);
5. prints a markdown table of images/s, p50/p99 and served / in-process best;
6. `python -m bench.photos --model resnet50` with `--decode cpu` and `--decode gpu`: 12 MP
   camera JPEGs decoded by Pillow or by nvImageCodec on the GPU, served vs in-process.
`--allow-cpu` runs the same on the CPU with short windows (to check the script itself).
Bounded: about 5 minutes on a GPU with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.loadgen import LevelResult, infer_request_bytes, run_level
from bench.resnet50 import write_resnet50
from bench.run import OUT, ROOT, ServerProcess, machine
from service.runtime.onnx_runner import CUDA, OnnxRunner

BATCHES = (1, 2, 4, 8, 16, 32, 64)
MODELS = (("resnet50_fp32", np.float32, "FP32"), ("resnet50_fp16", np.float16, "FP16"))


def in_process_best(
    path: Path, device: str, dtype: type[np.floating], seconds: float
) -> tuple[float, int]:
    runner = OnnxRunner(path, device=device)
    best, best_batch = 0.0, 1
    for batch in BATCHES:
        feeds = {"image": np.random.default_rng(0).random((batch, 3, 224, 224)).astype(dtype)}
        runner.run(feeds, ["logits"])  # the first run of a shape: cuDNN algorithm search
        runs, started = 0, time.perf_counter()
        while runs < 3 or time.perf_counter() - started < seconds:
            runner.run(feeds, ["logits"])
            runs += 1
        rate = runs * batch / (time.perf_counter() - started)
        if rate > best:
            best, best_batch = rate, batch
    return best, best_batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--allow-cpu", action="store_true", help="check the script on a CPU")
    parser.add_argument("--seconds", type=float, default=8.0, help="per served level")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-photos", action="store_true", help="no bench.photos runs")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    args = parser.parse_args()
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()
    has_cuda = CUDA in ort.get_available_providers()
    if not has_cuda and not args.allow_cpu:
        print(
            f"no CUDA execution provider in this onnxruntime ({ort.__version__}, providers "
            f"{ort.get_available_providers()}): install onnxruntime-gpu (alone: it shares the "
            "module name with onnxruntime), or pass --allow-cpu to check the script",
            file=sys.stderr,
        )
        return 2
    device = "cuda" if has_cuda else "cpu"
    seconds = args.seconds if has_cuda else min(args.seconds, 2.0)
    print(f"machine: {machine()}", flush=True)
    if has_cuda:
        query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        gpu = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
        print(f"gpu: {gpu}", flush=True)
    if not args.skip_tests:
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/unit/runtime/test_warmup_runtime.py",
             "tests/integration/runtime/test_io_binding.py",
             "tests/unit/images/test_device_images.py"],
            cwd=ROOT, check=False,
        )  # fmt: skip
        if tests.returncode != 0:
            print("GPU tests failed", file=sys.stderr)
            return 1
    repository = OUT / "gpu-models"
    models = MODELS if has_cuda else MODELS[:1]  # the CPU EP has no fp16 convolutions
    for name, dtype, _ in models:
        write_resnet50(repository / name, dtype, max_batch_size=64)
        (repository / name / "config.yaml").write_text(f"max_batch_size: 64\ndevice: {device}\n")
    rows = []
    for name, dtype, datatype in models:
        path = repository / name / "1" / "model.onnx"
        best, best_batch = in_process_best(path, device, dtype, min(seconds, 3.0))
        print(f"{name}: in-process best {best:.0f} img/s at batch {best_batch}", flush=True)
        rows.append((name, datatype, best, best_batch))
    server = ServerProcess(repository, batching=True)
    table = [
        "| model | in-process best (batch) | "
        + " | ".join(f"c={c} img/s (p50/p99 ms)" for c in args.concurrency)
        + " | best served / in-process |",
        "|---|---|" + "---|" * len(args.concurrency) + "---|",
    ]
    try:
        for name, datatype, best, best_batch in rows:
            payload = infer_request_bytes(name, "image", (1, 3, 224, 224), datatype)
            levels: list[LevelResult] = []
            for concurrency in args.concurrency:
                result = asyncio.run(
                    run_level(server.address, payload, concurrency, warmup_s=2, duration_s=seconds)
                )
                levels.append(result)
                print(
                    f"{name} c={concurrency}: {result.throughput:.0f} img/s, "
                    f"errors {result.errors}",
                    flush=True,
                )
            cells = " | ".join(
                f"{r.throughput:,.0f} ({r.p50_ms:.1f}/{r.p99_ms:.1f})" for r in levels
            )
            ratio = max(r.throughput for r in levels) / best
            table.append(
                f"| {name} on {device} | {best:,.0f} ({best_batch}) | {cells} | {ratio:.2f}x |"
            )
    finally:
        server.stop()
    print("\n".join(table), flush=True)
    if args.skip_photos:
        return 0
    # 12 MP camera JPEGs to the ResNet-50 (fp32): decoding on the CPU, then on the GPU.
    failed = 0
    for decode in ("cpu", "gpu") if has_cuda else ("cpu",):
        photos = subprocess.run(
            [sys.executable, "-m", "bench.photos", "--model", "resnet50", "--decode", decode,
             "--seconds", str(min(seconds, 5.0))],
            cwd=ROOT, check=False,
        )  # fmt: skip
        failed |= photos.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
