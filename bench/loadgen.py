"""A bounded, closed-loop KServe v2 load generator (grpc.aio, loopback only).

C workers each send one ModelInfer, wait for the answer, send the next. The request is
serialized once up front and sent as raw bytes, so the client spends as little CPU as
possible on a 2-core machine shared with the server. Each level runs a warm-up window
(not recorded), then a measured window bounded by time and by request count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from service.v2 import grpc_service_pb2 as pb

LOOPBACK = ("127.", "localhost", "[::1]")
METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def infer_request_bytes(
    model: str, input_name: str, shape: tuple[int, ...], datatype: str = "FP32", seed: int = 0
) -> bytes:
    rng = np.random.default_rng(seed)
    data: np.ndarray
    if datatype == "UINT8":
        data = rng.integers(0, 256, shape, dtype=np.uint8)
    elif datatype == "FP16":
        data = rng.random(shape, dtype=np.float32).astype(np.float16)
    else:
        data = rng.random(shape, dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(data.tobytes())
    return request.SerializeToString()


async def run_level(
    url: str,
    payload: bytes | Sequence[bytes],
    concurrency: int,
    *,
    warmup_s: float,
    duration_s: float,
    max_requests: int = 1_000_000,
    before_window: Callable[[], Awaitable[object]] | None = None,
    latencies_out: list[float] | None = None,
) -> LevelResult:
    """`payload`: one serialized request, or several that each worker sends in turn
    (worker i starts at the i-th: every mix of them is in flight at once).
    `before_window` is awaited between the warm-up and the measured window (a barrier
    shared with other client processes); `latencies_out` receives the window's latencies
    (seconds), for percentiles over several processes."""
    if not url.startswith(LOOPBACK):
        raise ValueError(f"load is only sent to loopback addresses, not {url}")
    payloads = [payload] if isinstance(payload, bytes) else list(payload)
    latencies: list[float] = []
    errors = 0
    recording = False
    stop = False
    enough = asyncio.Event()  # max_requests reached before the window closed
    async with grpc.aio.insecure_channel(url) as channel:
        call = channel.unary_unary(
            METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )

        async def worker(index: int) -> None:
            nonlocal errors, stop
            while not stop:
                started = time.perf_counter()
                index += 1
                try:
                    await call(payloads[index % len(payloads)], timeout=60)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                if recording:
                    latencies.append(time.perf_counter() - started)
                    if len(latencies) >= max_requests:
                        stop = True
                        enough.set()

        workers = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        await asyncio.sleep(warmup_s)  # bench pacing, not synchronisation
        if before_window is not None:
            await before_window()
        recording = True
        begin = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), duration_s)
        stop = True
        elapsed = time.perf_counter() - begin
        await asyncio.gather(*workers)
    if latencies_out is not None:
        latencies_out.extend(latencies)
    ordered = np.sort(np.asarray(latencies)) * 1000 if latencies else np.zeros(1)
    return LevelResult(
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        seconds=elapsed,
        p50_ms=float(np.percentile(ordered, 50)),
        p99_ms=float(np.percentile(ordered, 99)),
    )
