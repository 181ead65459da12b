"""`make bench`: served throughput and latency as ratios against in-process onnxruntime.

For the digits CNN (models/digits) and a ResNet-18 at 3x224x224 (random weights, generated
here, never committed), in one run:
1. in-process onnxruntime throughput at batch 1..64, with the very session settings the
   server uses (service.runtime.onnx_runner.OnnxRunner);
2. cnnserve as a separate process on a loopback port, batching off then on, driven by
   bench/loadgen.py at concurrency 1, 8, 32 (batch-1 requests, closed loop);
3. a table of images/s, p50/p99 and the ratios served / in-process best and on / off,
   printed and written into bench/README.md between the bench markers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.loadgen import LevelResult, infer_request_bytes, run_level
from service.runtime.onnx_runner import OnnxRunner

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
README = ROOT / "bench" / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
BATCHES = (1, 2, 4, 8, 16, 32, 64)
CONCURRENCY = (1, 8, 32)


@dataclass(frozen=True)
class BenchModel:
    name: str
    input_name: str
    shape: tuple[int, ...]  # one image as the client sends it, without the batch axis
    duration_s: float
    datatype: str = "FP32"
    model_shape: tuple[int, ...] = ()  # the bare ONNX model's input, when it differs


def build_repository(root: Path) -> list[BenchModel]:
    """models/digits as committed, plus a generated ResNet-18 (needs torch)."""
    import torch

    from export.architectures import ResNet18
    from export.onnx_export import export_onnx

    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(ROOT / "models" / "digits", root / "digits")
    resnet = root / "resnet18"
    torch.manual_seed(0)
    model = ResNet18().eval()
    export_onnx(model, torch.zeros(1, 3, 224, 224), resnet / "1" / "model.onnx", "image", "logits")
    (resnet / "config.yaml").write_text("max_batch_size: 32\n")
    return [
        # Served with its preprocessing: clients send uint8 NHWC pixels.
        BenchModel("digits", "image", (8, 8, 1), 5.0, "UINT8", (1, 8, 8)),
        BenchModel("resnet18", "image", (3, 224, 224), 10.0),
    ]


def in_process(path: Path, model: BenchModel, batch: int, min_s: float, spin: bool) -> float:
    """Images per second of one OnnxRunner (the server's session settings) at `batch`.

    The server turns onnxruntime's thread spinning off (it steals CPU from gRPC); alone in a
    process spinning can be faster, so the in-process baseline takes the better of both."""
    runner = OnnxRunner(path, device="auto", spin=spin)
    output = runner.outputs()[0].name
    shape = (batch, *(model.model_shape or model.shape))
    feeds = {model.input_name: np.random.default_rng(0).random(shape, np.float32)}
    runner.run(feeds, [output])  # first-shape cost, as the server's warm-up pays it
    runs, started = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - started < min_s:
        runner.run(feeds, [output])
        runs += 1
    return runs * batch / (time.perf_counter() - started)


class ServerProcess:
    def __init__(self, repository: Path, batching: bool, flags: Sequence[str] = ()) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--model-repository", str(repository),
             "--port", "0", "--batching", "on" if batching else "off", "--metrics-port", "0",
             "--no-http",
             *flags],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.address = ""
        for line in self.process.stdout:
            if line.startswith("cnnserve listening on "):
                self.address = line.split()[-1]
                break
        if not self.address:
            raise RuntimeError("cnnserve did not start")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def machine() -> str:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = found.group(1).strip() if found else cpu
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"onnxruntime {ort.__version__} (providers: {', '.join(ort.get_available_providers())})"
    )


@dataclass(frozen=True)
class Comparison:
    """Two server settings for one model at one concurrency (batching on)."""

    title: str
    baseline: tuple[str, ...]  # serve flags of the setting compared against
    shipped: tuple[str, ...]  # serve flags of the default
    labels: tuple[str, str]
    concurrency: int = 32


COMPARISONS = {
    "metrics": Comparison("Metrics overhead", ("--no-metrics",), (), ("off", "on")),
    "event-loop": Comparison(
        "Event loop", ("--event-loop", "asyncio"), (), ("asyncio", "uvloop (default)")
    ),
    "ort-spinning": Comparison(
        "onnxruntime intra-op spinning", ("--ort-spinning",), (), ("on", "off (default)")
    ),
}


def compare(
    repository: Path, model: BenchModel, comparison: Comparison, scale: float, rounds: int
) -> str:
    """The two settings interleaved, `rounds` times each; the order alternates per round so
    that a drift or an order effect cancels out."""
    payload = infer_request_bytes(model.name, model.input_name, (1, *model.shape), model.datatype)
    settings = (comparison.baseline, comparison.shipped)
    results: dict[int, list[float]] = {0: [], 1: []}
    for index in range(rounds):
        for which in (0, 1) if index % 2 == 0 else (1, 0):
            server = ServerProcess(repository, batching=True, flags=settings[which])
            try:
                level = asyncio.run(
                    run_level(server.address, payload, comparison.concurrency,
                              warmup_s=1.0 * scale, duration_s=model.duration_s * scale)
                )  # fmt: skip
            finally:
                server.stop()
            results[which].append(level.throughput)
            print(comparison.title, comparison.labels[which], f"{level.throughput:.1f}/s")
    base, shipped = (sum(results[w]) / rounds for w in (0, 1))
    runs = ", ".join(f"{a:,.0f}/{b:,.0f}" for a, b in zip(results[0], results[1], strict=True))
    first, second = comparison.labels
    return (
        f"{comparison.title}, {model.name} at c={comparison.concurrency}, batching on, "
        f"{rounds} interleaved runs ({first}/{second}: {runs}): mean {first} {base:,.0f} req/s, "
        f"{second} {shipped:,.0f} req/s, {second} / {first} = {shipped / base:.3f}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every duration")
    parser.add_argument("--no-readme", action="store_true", help="print only")
    parser.add_argument(
        "--compare", choices=sorted(COMPARISONS), help="only this comparison of two settings"
    )
    parser.add_argument("--rounds", type=int, default=6, help="interleaved runs per setting")
    parser.add_argument("--concurrency", type=int, help="with --compare: instead of 32")
    args = parser.parse_args(argv)
    repository = OUT / "repository"
    models = build_repository(repository)
    if args.compare:
        comparison = COMPARISONS[args.compare]
        if args.concurrency:
            comparison = replace(comparison, concurrency=args.concurrency)
        print(compare(repository, models[0], comparison, args.scale, args.rounds))
        return 0
    started = time.monotonic()
    lines = [f"Machine: {machine()}.", ""]
    inproc: dict[str, dict[int, float]] = {}
    for model in models:
        path = repository / model.name / "1" / "model.onnx"
        inproc[model.name] = {
            b: max(in_process(path, model, b, 1.0 * args.scale, spin) for spin in (False, True))
            for b in BATCHES
        }
        print(model.name, {b: round(v, 1) for b, v in inproc[model.name].items()}, flush=True)
    served: dict[tuple[str, bool, int], LevelResult] = {}
    for batching in (False, True):
        server = ServerProcess(repository, batching)
        try:
            for model in models:
                payload = infer_request_bytes(
                    model.name, model.input_name, (1, *model.shape), model.datatype
                )
                for c in CONCURRENCY:
                    result = asyncio.run(
                        run_level(
                            server.address, payload, c,
                            warmup_s=1.0 * args.scale, duration_s=model.duration_s * args.scale,
                        )
                    )  # fmt: skip
                    served[(model.name, batching, c)] = result
                    mode = "on" if batching else "off"
                    print(model.name, mode, c, f"{result.throughput:.1f}/s", flush=True)
        finally:
            server.stop()
    lines += ["In-process onnxruntime (images/s by batch size):", ""]
    lines.append("| model | " + " | ".join(f"b={b}" for b in BATCHES) + " | best |")
    lines.append("|---" * (len(BATCHES) + 2) + "|")
    for model in models:
        row = inproc[model.name]
        best_batch = max(row, key=lambda b: row[b])
        cells = " | ".join(f"{row[b]:,.0f}" for b in BATCHES)
        lines.append(f"| {model.name} | {cells} | {row[best_batch]:,.0f} (b={best_batch}) |")
    lines += [
        "",
        "Served, batch-1 requests, closed loop (images/s; p50 / p99 ms; ratio to the in-process"
        " best):",
        "",
        "| model | c | batching off | batching on | on / off | on / in-process best |",
        "|---|---|---|---|---|---|",
    ]
    for model in models:
        best = max(inproc[model.name].values())
        for c in CONCURRENCY:
            off, on = served[(model.name, False, c)], served[(model.name, True, c)]
            errors = off.errors + on.errors
            lines.append(
                f"| {model.name} | {c} | {off.throughput:,.0f}; {off.p50_ms:.2f} / "
                f"{off.p99_ms:.2f} | {on.throughput:,.0f}; {on.p50_ms:.2f} / {on.p99_ms:.2f} | "
                f"{on.throughput / off.throughput:.2f} | {on.throughput / best:.2f} |"
                + (f" errors: {errors}" if errors else "")
            )
    lines += ["", compare(repository, models[0], COMPARISONS["metrics"], args.scale, args.rounds)]
    lines += ["", f"Run took {time.monotonic() - started:.0f} s (plus model generation)."]
    report = "\n".join(lines)
    print(report)
    if not args.no_readme:
        text = README.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        README.write_text(f"{head}{BEGIN}\n{report}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
