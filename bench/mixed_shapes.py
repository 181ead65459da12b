"""`python -m bench.mixed_shapes`: requests of several shapes to one variable-size model.

The mid-size CNN with a variable width (bench/midcnn.py, FP32 [N, 3, 48, W], config-less)
gets batch-1 requests of widths 192, 160 and 96 from C closed-loop workers (bench/loadgen.py,
each worker cycling through the widths, so every mix is in flight). Compared in one run:
- in-process: onnxruntime alone, for each width the best of batch 1/8/16 with the server's
  thread count (spinning on and off); the mix's rate is the harmonic mean of those (each
  width is a third of the images);
- served, one width at a time (the same server);
- served, the three widths mixed.
Criterion: no errors, and mixed served >= 0.9x the served widths one at a time (what
mixing costs the batcher); exits 1 otherwise. Served / in-process is printed as the figure
(on this 2-core machine the client shares the server's cores, which caps it near 0.5 for
any setting: bench/README.md, "instances: auto"). Before batches formed per shape, 87 % of
such requests failed (INTERNAL).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
from pathlib import Path

import onnx

from bench.loadgen import infer_request_bytes, run_level
from bench.midcnn import INPUT_SHAPE, midcnn
from bench.run import OUT, BenchModel, ServerProcess, in_process

WIDTHS = (192, 160, 96)
BATCHES = (1, 8, 16)
UNIFORM_RATIO = 0.9
MODEL = "midcnn_lines"


def in_process_best(path: Path, width: int, min_s: float) -> tuple[float, str]:
    """Images per second of the best batch size (and spinning) for one width."""
    model = BenchModel(MODEL, "x", (*INPUT_SHAPE[:2], width), duration_s=0.0)
    rates = {
        (batch, spin): in_process(path, model, batch, min_s, spin)
        for spin in (False, True)
        for batch in BATCHES
    }
    (batch, spin), best = max(rates.items(), key=lambda item: item[1])
    return best, f"batch {batch}{', spinning' if spin else ''}"


def harmonic(rates: list[float]) -> float:
    """The rate of a mix with equal counts of each (time per image adds up)."""
    return len(rates) / sum(1 / r for r in rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured window per run")
    args = parser.parse_args()
    root = OUT / "mixed_shapes"
    if root.exists():
        shutil.rmtree(root)
    path = root / MODEL / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(midcnn(variable_width=True), str(path))
    best = {w: in_process_best(path, w, min_s=1.0) for w in WIDTHS}
    for width, (rate, shape) in best.items():
        print(f"in-process width {width}: {rate:,.0f} img/s ({shape})", flush=True)
    payloads = {
        w: infer_request_bytes(MODEL, "x", (1, *INPUT_SHAPE[:2], w), seed=w) for w in WIDTHS
    }
    server = ServerProcess(root, batching=True)
    uniform: dict[int, list[float]] = {w: [] for w in WIDTHS}
    mixed: list[float] = []
    errors = 0
    try:
        for _ in range(args.rounds):
            runs: list[tuple[str, list[bytes], list[float]]] = [
                *((str(w), [payloads[w]], uniform[w]) for w in WIDTHS),
                ("mixed", list(payloads.values()), mixed),
            ]
            for label, sent, rates in runs:
                level = asyncio.run(
                    run_level(server.address, sent, args.concurrency, warmup_s=1.5,
                              duration_s=args.seconds)
                )  # fmt: skip
                errors += level.errors
                rates.append(level.throughput)
                print(
                    f"served {label}: {level.throughput:,.0f} img/s, p50 {level.p50_ms:.1f} ms, "
                    f"errors {level.errors}",
                    flush=True,
                )
    finally:
        server.stop()
    in_process_mix = harmonic([rate for rate, _ in best.values()])
    uniform_mix = harmonic([statistics.median(uniform[w]) for w in WIDTHS])
    served_mix = statistics.median(mixed)
    ok = errors == 0 and served_mix >= UNIFORM_RATIO * uniform_mix
    print(
        f"\n| widths {', '.join(map(str, WIDTHS))} at c={args.concurrency} | img/s "
        f"(median of {args.rounds}) | mixed served / this |\n|---|---|---|\n"
        f"| in-process, per-width best, mixed | {in_process_mix:,.0f} | "
        f"{served_mix / in_process_mix:.2f} |\n"
        f"| served, one width at a time, mixed | {uniform_mix:,.0f} | "
        f"{served_mix / uniform_mix:.2f} |\n"
        f"| served, widths mixed | {served_mix:,.0f} | 1.00 |\nerrors: {errors}"
    )
    print(
        f"\ncriterion: no errors, mixed >= {UNIFORM_RATIO}x the widths served one at a "
        f"time: {'pass' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
