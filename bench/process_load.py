"""Closed-loop load from several client processes, one gRPC connection each.

One Python client process tops out near a few thousand requests per second, so a GPU
server is loaded from P processes (spawned), each running bench/loadgen.py's closed loop
with concurrency / P requests in flight (raw serialized ModelInfer bytes) over a
connection of its own. The measured window starts at a barrier that every client and
this process pass after the warm-up, so the server's CPU (read from /proc over the window)
and the answers counted belong to the same seconds.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import numpy as np

from bench.loadgen import LOOPBACK, LevelResult, run_level
from bench.workers import process_cpu_s

BARRIER_TIMEOUT_S = 180.0  # spawn + imports + warm-up of the slowest client


def _client(
    url: str,
    payload: bytes,
    in_flight: int,
    warmup_s: float,
    duration_s: float,
    barrier: Barrier,
    out: Queue,  # type: ignore[type-arg]
) -> None:
    """One client process: its own connection (grpc-core per process), `in_flight` requests."""
    latencies: list[float] = []
    result = asyncio.run(
        run_level(
            url, payload, in_flight, warmup_s=warmup_s, duration_s=duration_s,
            before_window=lambda: asyncio.to_thread(barrier.wait, BARRIER_TIMEOUT_S),
            latencies_out=latencies,
        )
    )  # fmt: skip
    out.put((latencies, result.errors, result.seconds))


def run_level_processes(
    url: str,
    payload: bytes,
    concurrency: int,
    processes: int,
    *,
    server_pid: int,
    warmup_s: float,
    duration_s: float,
) -> tuple[LevelResult, float]:
    """The level's result and the server's CPU seconds (its process and children) over
    the measured window."""
    if not url.startswith(LOOPBACK):
        raise ValueError(f"load is only sent to loopback addresses, not {url}")
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes + 1)
    results: Queue = context.Queue()  # type: ignore[type-arg]
    clients = [
        context.Process(
            target=_client, args=(url, payload, share, warmup_s, duration_s, barrier, results)
        )
        for share in shares
    ]
    for client in clients:
        client.start()
    try:
        barrier.wait(BARRIER_TIMEOUT_S)
        cpu_before = process_cpu_s(server_pid)
        time.sleep(duration_s)  # the clients' window: pacing, they stop on their own clocks
        cpu = process_cpu_s(server_pid) - cpu_before
        answers = [results.get(timeout=BARRIER_TIMEOUT_S) for _ in clients]
    finally:
        for client in clients:
            client.join(timeout=60)
            if client.is_alive():
                client.kill()
    latencies = np.sort(np.concatenate([np.asarray(a[0]) for a in answers] or [np.zeros(0)]))
    ordered = latencies * 1000 if latencies.size else np.zeros(1)
    result = LevelResult(
        concurrency=concurrency,
        requests=int(latencies.size),
        errors=sum(a[1] for a in answers),
        seconds=max(a[2] for a in answers),
        p50_ms=float(np.percentile(ordered, 50)),
        p99_ms=float(np.percentile(ordered, 99)),
    )
    return result, cpu
