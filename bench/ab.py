"""`python -m bench.ab REV [--model digits|midcnn|resnet18] [--concurrency 32] [--batching on]
[--rounds 6]`: this checkout against commit REV, interleaved: the before/after of a change
on a machine whose speed drifts (each round starts a fresh server of each, alternating
which goes first; the medians are compared). REV is checked out into a temporary git
worktree. `digits`: the example repository (12 KB-ish uint8 requests, compute-free);
`midcnn`: the mid-size CNN of bench/midcnn.py, config-less (110 KB FP32 requests);
`resnet18`: the peers' ResNet-18 (bench/peer_models.py), config-less (588 KB FP32).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

from bench.loadgen import infer_request_bytes, run_level
from bench.midcnn import INPUT_SHAPE, midcnn
from bench.peer_models import resnet18_onnx
from bench.run import OUT, ROOT


def start(cwd: Path, repository: Path, batching: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--model-repository", str(repository),
         "--port", "0", "--metrics-port", "0", "--no-http", "--batching", batching],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("cnnserve listening on "):
            return process, line.split()[-1]
    raise RuntimeError(f"the server in {cwd} did not start")


def workload(model: str, folder: Path) -> tuple[Path, bytes]:
    """The repository to serve and the request to send."""
    if model == "digits":
        return ROOT / "models", infer_request_bytes("digits", "image", (1, 8, 8, 1), "UINT8")
    path = folder / "repository" / model / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    if model == "resnet18":  # the peers' ResNet-18, config-less
        shutil.copy(resnet18_onnx(OUT / "peer_models"), path)
        return folder / "repository", infer_request_bytes(model, "input", (1, 3, 224, 224))
    onnx.save(midcnn(), str(path))
    return folder / "repository", infer_request_bytes("midcnn", "x", (1, *INPUT_SHAPE))


def compare(
    base: Path, repository: Path, payload: bytes, concurrency: int, batching: str, rounds: int
) -> float:
    rates: dict[str, list[float]] = {"base": [], "this": []}
    for index in range(rounds):
        order = [("base", base), ("this", ROOT)]
        for name, cwd in order if index % 2 == 0 else order[::-1]:
            process, address = start(cwd, repository, batching)
            try:
                level = asyncio.run(run_level(address, payload, concurrency, warmup_s=1.5,
                                              duration_s=5))  # fmt: skip
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
            rates[name].append(level.throughput)
            print(f"{name}: {level.throughput:,.0f} req/s", flush=True)
    base_median, this_median = (statistics.median(rates[k]) for k in ("base", "this"))
    print(
        f"c={concurrency} batching {batching}, {rounds} rounds: this/base = "
        f"{this_median / base_median:.3f} (medians {this_median:,.0f} vs {base_median:,.0f})"
    )
    return this_median / base_median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rev")
    parser.add_argument("--model", choices=("digits", "midcnn", "resnet18"), default="digits")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batching", choices=("on", "off"), default="on")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder) / "base"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(base), args.rev],
                       cwd=ROOT, check=True)  # fmt: skip
        repository, payload = workload(args.model, Path(folder))
        try:
            compare(base, repository, payload, args.concurrency, args.batching, args.rounds)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
