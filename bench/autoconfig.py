"""`python -m bench.autoconfig`: does `instances: auto` use the machine without hand-tuning?

A mid-size CNN (bench/midcnn.py: five convolutions, ~66 M multiply-adds, FP32 input
[3, 48, 192], 110 KB a request) is served three ways, in one run:
- in-process: onnxruntime alone, the best of every split of the cores x batch size
  (service/runtime/autotune.py's search with a generous budget): the physical limit;
- config-less (`instances: auto`, the default): what a user gets by dropping the file in;
- hand-picked: `instances: 2` and `max_batch_size: 8`, the setting found by hand before.
Served figures: tritonclient.grpc.aio, batch-1 requests, closed loop at c=32, in this
process; the two servers interleaved, median of the rounds.
Criterion: config-less >= 0.8x the in-process best and >= the hand-picked setting; exits 1
otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
from pathlib import Path

import onnx

from bench.midcnn import INPUT_SHAPE, midcnn
from bench.overhead import Payload, Process, closed_loop
from bench.run import OUT
from service.runtime.autotune import Search
from service.runtime.onnx_runner import OnnxRunner, default_intra_op_threads
from service.runtime.warmup import zero_feeds

IN_PROCESS_RATIO = 0.8
HAND_PICKED = "instances: 2\nmax_batch_size: 8\n"
PAYLOAD = Payload("midcnn", "FP32", (1, *INPUT_SHAPE))


def build(root: Path) -> dict[str, Path]:
    """Two repositories holding the same model: config-less, and hand-picked."""
    if root.exists():
        shutil.rmtree(root)
    repositories = {}
    for label, config in (("config-less", None), ("hand-picked", HAND_PICKED)):
        repository = root / label.replace("-", "_")
        path = repository / "midcnn" / "1" / "model.onnx"
        path.parent.mkdir(parents=True)
        onnx.save(midcnn(), str(path))
        if config is not None:
            (repository / "midcnn" / "config.yaml").write_text(config)
        repositories[label] = repository
    return repositories


def in_process_best(model: Path, budget_s: float) -> tuple[float, str]:
    """Rows/s of the best split x batch size, onnxruntime alone."""
    from service.configuration.signature import infer_config

    probe = OnnxRunner(model)
    config = infer_config("midcnn", probe.inputs(), probe.outputs())
    probe.close()
    search = Search(
        "midcnn",
        lambda threads: OnnxRunner(model, intra_op_threads=threads),
        lambda size: zero_feeds(config, size),
        [spec.name for spec in config.outputs],
        cores=default_intra_op_threads(1),
        batch_limit=config.max_batch_size,
        batch_stated=False,
        budget_s=budget_s,
    )
    tuning, runners = search.run()
    for runner in runners:
        runner.close()
    best = max(tuning.trials, key=lambda t: t.rows_per_s)
    return best.rows_per_s, f"{best.instances} x {best.threads} threads, batch {best.batch}"


def serve(repository: Path) -> Process:
    command = [sys.executable, "-m", "service", "serve", "--model-repository", str(repository),
               "--port", "0", "--no-metrics"]  # fmt: skip
    return Process(command, "cnnserve listening on ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window per run")
    args = parser.parse_args()
    repositories = build(OUT / "autoconfig")
    model = repositories["config-less"] / "midcnn" / "1" / "model.onnx"
    best_rate, best_shape = in_process_best(model, budget_s=8.0)
    print(f"in-process best: {best_rate:,.0f} img/s ({best_shape})", flush=True)
    cores = default_intra_op_threads(1)
    servers = {label: serve(path) for label, path in repositories.items()}
    rates: dict[str, list[float]] = {label: [] for label in servers}
    try:
        for _ in range(args.rounds):
            for label, server in servers.items():
                measure = asyncio.run(
                    closed_loop(
                        server.address,
                        "midcnn",
                        PAYLOAD,
                        server.process.pid,
                        False,
                        2.0,
                        args.seconds,
                    )
                )
                rates[label].append(measure.rate)
                client_us = measure.client_cpu_s / max(measure.requests, 1) * 1e6
                print(
                    f"{label}: {measure.rate:,.0f} img/s, server CPU {measure.cpu_us:,.0f} us/img "
                    f"(compute in-process: {cores * 1e6 / best_rate:,.0f}), client CPU "
                    f"{client_us:,.0f} us/img, errors {measure.errors}",
                    flush=True,
                )
    finally:
        for server in servers.values():
            server.stop()
    auto = statistics.median(rates["config-less"])
    hand = statistics.median(rates["hand-picked"])
    ok = auto >= IN_PROCESS_RATIO * best_rate and auto >= hand
    print(
        f"\n| setting | img/s (median of {args.rounds}) | / in-process best |\n|---|---|---|\n"
        f"| in-process best ({best_shape}) | {best_rate:,.0f} | 1.00 |\n"
        f"| config-less (instances: auto) | {auto:,.0f} | {auto / best_rate:.2f} |\n"
        f"| hand-picked (instances 2, max_batch_size 8) | {hand:,.0f} | {hand / best_rate:.2f} |"
    )
    print(
        f"\ncriterion: config-less >= {IN_PROCESS_RATIO}x in-process and >= hand-picked: "
        f"{'pass' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
