"""`python -m bench.low_load [--rounds 2] [--seconds 5]`: instances: auto at both ends of the
load (issue 26). Three models, each served config-less (instances: auto) and with every
stated split of the cores (`instances: 1`: one run on every core; `instances: <cores>`: one
core each), measured at c=1, 8 and 32 with batch-1 requests (bench/loadgen.py: a raw gRPC
closed loop), the settings interleaved, medians of the rounds:
- digits: models/digits as committed (uint8 [1, 8, 8, 1], compute-free);
- midcnn: bench/midcnn.py's mid-size CNN (FP32 [3, 48, 192]);
- resnet18: the peers' ResNet-18 (../shared/peerbench/export_models.py, FP32 [3, 224, 224];
  export.architectures.ResNet18 when that script is absent).
Criterion: config-less c=1 p50 <= 1.1x the best stated setting's c=1 p50, on every model,
and no failed request.
Throughput at c=32 against today's config-less is `python -m bench.ab REV --model ...`."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.ab import start, workload
from bench.loadgen import LevelResult, run_level
from bench.run import OUT, ROOT
from service.runtime.onnx_runner import default_intra_op_threads

LEVELS = (1, 8, 32)
LATENCY_RATIO = 1.1


@dataclass(frozen=True)
class Workload:
    model: str
    payload: bytes
    folder: Path  # the model's folder, copied into one repository per setting
    base_config: str  # config.yaml text every setting starts from ("" = none)


def workloads(scratch: Path) -> list[Workload]:
    """bench.ab's repositories and requests, each model's folder and config as a base."""
    made = []
    for model in ("digits", "midcnn", "resnet18"):
        repository, payload = workload(model, scratch / model)
        config = repository / model / "config.yaml"
        base = config.read_text() if config.is_file() else ""
        made.append(Workload(model, payload, repository / model, base))
    return made


def repositories(work: Workload, scratch: Path, cores: int) -> dict[str, Path]:
    settings = {"config-less": ""} | {
        f"instances: {n}": f"instances: {n}\n" for n in sorted({1, cores})
    }
    made = {}
    for label, extra in settings.items():
        root = scratch / "repositories" / work.model / label.replace(": ", "_")
        shutil.copytree(work.folder, root / work.model)
        config = work.base_config + extra
        if config:
            (root / work.model / "config.yaml").write_text(config)
        made[label] = root
    return made


def measure(
    work: Workload, repos: dict[str, Path], rounds: int, seconds: float
) -> dict[str, dict[int, list[LevelResult]]]:
    results: dict[str, dict[int, list[LevelResult]]] = {
        label: {level: [] for level in LEVELS} for label in repos
    }
    for index in range(rounds):
        labels = list(repos) if index % 2 == 0 else list(repos)[::-1]
        for label in labels:
            process, address = start(ROOT, repos[label], "on")
            try:
                for level in LEVELS:
                    result = asyncio.run(run_level(address, work.payload, level, warmup_s=1.0,
                                                   duration_s=seconds))  # fmt: skip
                    results[label][level].append(result)
                    print(
                        f"{work.model} {label} c={level}: {result.throughput:,.1f} req/s, "
                        f"p50 {result.p50_ms:.2f} ms, errors {result.errors}",
                        flush=True,
                    )
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per level")
    args = parser.parse_args()
    scratch = OUT / "low_load"
    if scratch.exists():
        shutil.rmtree(scratch)
    cores = default_intra_op_threads(1)
    table = ["| model | setting | c=1 p50 ms | c=1 req/s | c=8 req/s | c=32 req/s |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    verdicts = []
    for work in workloads(scratch):
        results = measure(work, repositories(work, scratch, cores), args.rounds, args.seconds)
        p50 = {label: statistics.median(r.p50_ms for r in by[1]) for label, by in results.items()}
        for label, by in results.items():
            rates = [statistics.median(r.throughput for r in by[level]) for level in LEVELS]
            table.append(f"| {work.model} | {label} | {p50[label]:.2f} | "
                         + " | ".join(f"{rate:,.1f}" for rate in rates) + " |")  # fmt: skip
        best_stated = min(value for label, value in p50.items() if label != "config-less")
        ratio = p50["config-less"] / best_stated
        errors = sum(r.errors for by in results.values() for runs in by.values() for r in runs)
        verdicts.append((work.model, ratio, ratio <= LATENCY_RATIO and errors == 0))
    print("\n" + "\n".join(table) + "\n")
    for model, ratio, ok in verdicts:
        print(f"{model}: config-less c=1 p50 / best stated = {ratio:.2f} "
              f"(criterion <= {LATENCY_RATIO}, no errors): {'pass' if ok else 'FAIL'}")  # fmt: skip
    return 0 if all(ok for _, _, ok in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
