"""`python -m bench.investigations.floor_variants [--rounds 3] [--seconds 3]`: what the floor
servicer (bench/floor.py) costs per request once it also does Python work (`--spin-us`, measured as
the handler thread's CPU), suspends once on a future (`--await`) as cnnserve's request path
does, or does the least a model server does (`--model-repository`: read the input, run the
compute-free model's onnxruntime session on it per request, answer). 12 KB FP32 requests,
tritonclient.grpc.aio, c=32, rounds interleaved, median server CPU per request. No
criterion: it explains bench/README.md's "Serving cost per request".
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys

from bench.overhead import PAYLOADS, Process, build_repository, closed_loop
from bench.run import OUT

VARIANTS: dict[str, list[str]] = {
    "floor": [],
    "+ one suspension": ["--await"],
    "+ 40 us of Python": ["--spin-us", "40"],
    "+ 40 us of Python + one suspension": ["--spin-us", "40", "--await"],
    "+ 100 us of Python": ["--spin-us", "100"],
    "+ reading the input and running the model (onnxruntime)": ["--model-repository", "REPO"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    payload = PAYLOADS[0]
    repository = OUT / "floor-variants"
    build_repository(repository)
    servers = {}
    for name, flags in VARIANTS.items():
        arguments = [str(repository) if flag == "REPO" else flag for flag in flags]
        command = [sys.executable, "-m", "bench.floor", *arguments]
        servers[name] = Process(command, "floor listening on ")
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        for _ in range(args.rounds):
            for name, server in servers.items():
                measure = asyncio.run(
                    closed_loop(
                        server.address, payload.name, payload, server.process.pid, False, 1.0,
                        args.seconds,
                    )
                )  # fmt: skip
                cpu[name].append(measure.cpu_us)
    finally:
        for server in servers.values():
            server.stop()
    floor = statistics.median(cpu["floor"])
    print(f"{payload.label}, c=32, median of {args.rounds} interleaved rounds")
    print("| servicer | server CPU us/req | minus the floor |")
    print("|---|---|---|")
    for name, values in cpu.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.0f} | {median - floor:+.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
