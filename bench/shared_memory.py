"""`python -m bench.shared_memory`: server CPU per request, tensors in system shared memory
vs in the request (raw contents), at 150 KB and 600 KB inputs (issue 30).

One cnnserve (`--shared-memory system`) serves two compute-free models (ReduceMean: the
serving path alone): UINT8 [1, 224, 224, 3] (150 KB) and FP32 [1, 3, 224, 224] (602 KB).
tritonclient.grpc.aio, CONCURRENCY requests in flight, batch 1; in shared memory each
worker has its own input region (written once) and output region. Server CPU is read from
/proc over each window; rounds are interleaved, medians reported.
Criterion: at 600 KB, shared memory costs the server no more CPU per request than raw.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from typing import Any

import numpy as np
import onnx
import tritonclient.grpc.aio as triton_aio
import tritonclient.utils.shared_memory as shm

from bench.overhead import Payload, Process, compute_free_model
from bench.reliability import cpu_seconds
from bench.run import OUT

PAYLOADS = (
    Payload("mean_uint8_150k", "UINT8", (1, 224, 224, 3)),
    Payload("mean_fp32_600k", "FP32", (1, 3, 224, 224)),
)
CONCURRENCY = 8


def data(payload: Payload) -> np.ndarray:
    rng = np.random.default_rng(0)
    if payload.datatype == "FP32":
        return rng.random(payload.shape, dtype=np.float32)
    return rng.integers(0, 256, payload.shape, dtype=np.uint8)


async def measure(address: str, pid: int, payload: Payload, in_memory: bool, seconds: float
                  ) -> tuple[float, float, int]:  # fmt: skip
    """(requests/s, server CPU us per request, errors)."""
    client = triton_aio.InferenceServerClient(address)
    array = data(payload)
    regions: list[Any] = []
    count = errors = 0
    counting = stop = False

    async def worker(index: int) -> None:
        nonlocal count, errors
        tensor = triton_aio.InferInput("x", list(payload.shape), payload.datatype)
        outputs = None
        if in_memory:
            name = f"bench_{payload.name}_{index}"
            region = shm.create_shared_memory_region(f"{name}_in", f"/{name}_in", array.nbytes)
            out = shm.create_shared_memory_region(f"{name}_out", f"/{name}_out", 64)
            regions.extend((region, out))
            shm.set_shared_memory_region(region, [array])
            await client.register_system_shared_memory(f"{name}_in", f"/{name}_in", array.nbytes)
            await client.register_system_shared_memory(f"{name}_out", f"/{name}_out", 64)
            tensor.set_shared_memory(f"{name}_in", array.nbytes)
            outputs = [triton_aio.InferRequestedOutput("mean")]
            outputs[0].set_shared_memory(f"{name}_out", 64)
        else:
            tensor.set_data_from_numpy(array)
        while not stop:
            try:
                await client.infer(payload.name, [tensor], outputs=outputs)
            except Exception:
                errors += 1
                continue
            count += counting

    tasks = [asyncio.create_task(worker(i)) for i in range(CONCURRENCY)]
    await asyncio.sleep(1.0)  # warm-up: pacing only
    counting, cpu, begin = True, cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    used, elapsed, done = cpu_seconds(pid) - cpu, time.perf_counter() - begin, count
    stop = True
    await asyncio.gather(*tasks)
    await client.unregister_system_shared_memory()
    await client.close()
    for region in regions:
        shm.destroy_shared_memory_region(region)
    return done / elapsed, used / max(done, 1) * 1e6, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    root = OUT / "shared-memory"
    shutil.rmtree(root, ignore_errors=True)
    for payload in PAYLOADS:
        path = root / payload.name / "1" / "model.onnx"
        path.parent.mkdir(parents=True)
        onnx.save(compute_free_model(payload), str(path))
    server = Process(
        [sys.executable, "-m", "service", "serve", "--model-repository", str(root), "--port", "0",
         "--no-http", "--no-metrics", "--shared-memory", "system", "--autotune-budget", "0.5"],
        "cnnserve listening on",
    )  # fmt: skip
    rows: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    errors = 0
    try:
        for _ in range(args.rounds):
            for payload in PAYLOADS:
                for in_memory in (False, True):
                    window = measure(server.address, server.process.pid, payload, in_memory,
                                     args.seconds)  # fmt: skip
                    rate, cpu_us, failed = asyncio.run(window)
                    errors += failed
                    rows.setdefault((payload.name, in_memory), []).append((rate, cpu_us))
                    how = "shared memory" if in_memory else "raw"
                    print(f"{payload.label} {how}: {rate:,.0f} req/s, {cpu_us:,.0f} us")
    finally:
        server.stop()
    print(f"\nc={CONCURRENCY}, tritonclient.grpc.aio, {args.rounds} rounds, medians\n")
    print("| input | raw: req/s | raw: server CPU/request | shm: req/s | shm: server CPU/request "
          "| shm / raw CPU |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    ratios = {}
    for payload in PAYLOADS:
        raw = [statistics.median(v) for v in zip(*rows[(payload.name, False)], strict=True)]
        mem = [statistics.median(v) for v in zip(*rows[(payload.name, True)], strict=True)]
        ratios[payload.name] = mem[1] / raw[1]
        print(f"| {payload.label} | {raw[0]:,.0f} | {raw[1]:,.0f} us | {mem[0]:,.0f} | "
              f"{mem[1]:,.0f} us | {ratios[payload.name]:.2f}x |")  # fmt: skip
    if errors:
        print(f"FAIL: {errors} requests errored")
        return 1
    ok = ratios[PAYLOADS[1].name] <= 1.0
    print(f"criterion: shared memory CPU per request <= raw at 600 KB: "
          f"{ratios[PAYLOADS[1].name]:.2f}x: {'pass' if ok else 'FAIL'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
