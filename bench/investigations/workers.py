"""`python -m bench.investigations.workers`: would `--workers N` (N server processes on one
port) pay?

The decision bench for issue 17's third part: the mid-size CNN (bench/midcnn.py),
config-less, served by one cnnserve process (every core) and by two processes on the same
port (`--reuse-port`: SO_REUSEPORT; each process pinned to one core with taskset, so each sees
one core and sizes itself to it). The load: 4 tritonclient.grpc.aio connections x 8
requests in flight, batch 1, in this process (grpc balances connections, not requests, so
one connection would reach one worker). Rounds interleaved, median.
Criterion (the issue's bar for building --workers): two workers >= 1.3x one process;
exits 1 when not met, so --workers stays unbuilt.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time

import tritonclient.grpc.aio as triton_aio

from bench.autoconfig import PAYLOAD, build
from bench.overhead import inputs_for
from bench.run import OUT

WORKERS_RATIO = 1.3
CONNECTIONS = 4
PER_CONNECTION = 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start(repository: str, port: int, cpu: int | None = None) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "service", "serve", "--model-repository", repository,
               "--port", str(port), "--no-metrics", "--no-http", "--reuse-port"]  # fmt: skip
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("cnnserve listening on"):
            return process
    raise RuntimeError(f"{command} did not start")


async def rate(address: str, seconds: float) -> float:
    clients = [triton_aio.InferenceServerClient(address) for _ in range(CONNECTIONS)]
    inputs = inputs_for(PAYLOAD)
    count = 0
    counting = stop = False

    async def worker(client: triton_aio.InferenceServerClient) -> None:
        nonlocal count
        while not stop:
            await client.infer("midcnn", inputs)
            count += counting

    tasks = [asyncio.create_task(worker(c)) for c in clients for _ in range(PER_CONNECTION)]
    await asyncio.sleep(2.0)  # warm-up (pacing, not synchronisation)
    counting, began = True, time.perf_counter()
    await asyncio.sleep(seconds)
    measured = count / (time.perf_counter() - began)
    stop = True
    await asyncio.gather(*tasks)
    for client in clients:
        await client.close()
    return measured


def stop(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        process.terminate()
        process.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    repository = str(build(OUT / "autoconfig")["config-less"])
    rates: dict[str, list[float]] = {"one process": [], "two workers": []}
    for _ in range(args.rounds):
        port = free_port()
        processes = [start(repository, port)]
        try:
            rates["one process"].append(asyncio.run(rate(f"127.0.0.1:{port}", args.seconds)))
        finally:
            stop(processes)
        port = free_port()
        processes = [start(repository, port, 0), start(repository, port, 1)]
        try:
            rates["two workers"].append(asyncio.run(rate(f"127.0.0.1:{port}", args.seconds)))
        finally:
            stop(processes)
        print({label: f"{values[-1]:,.0f} img/s" for label, values in rates.items()}, flush=True)
    one, two = (statistics.median(rates[k]) for k in ("one process", "two workers"))
    ok = two >= WORKERS_RATIO * one
    print(
        f"one process {one:,.0f} img/s, two workers {two:,.0f} img/s: {two / one:.2f}x; "
        f"criterion for building --workers: >= {WORKERS_RATIO}x: {'pass' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
