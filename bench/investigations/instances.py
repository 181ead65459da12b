"""Instances: one onnxruntime session per instance, or one session shared by the threads?

Two threads run batches concurrently for a fixed time, on (a) two sessions of
cores // 2 intra-op threads each (what cnnserve does for `instances: 2`) and (b) one shared
session with every core. Reproduce: `.venv/bin/python -m bench.investigations.instances`
(after make bench, which generates bench/out/repository).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from service.runtime.onnx_runner import OnnxRunner, default_intra_op_threads

ROOT = Path(__file__).resolve().parents[2]
MODELS = {
    "resnet18": ((8, 3, 224, 224), ROOT / "bench/out/repository/resnet18/1/model.onnx"),
    "digits": ((16, 1, 8, 8), ROOT / "bench/out/repository/digits/1/model.onnx"),
}


def throughput(runners: list[OnnxRunner], shape: tuple[int, ...], seconds: float) -> float:
    name = runners[0].inputs()[0].name
    dtype = np.uint8 if "tensor(uint8)" in runners[0].inputs()[0].ort_type else np.float32
    feeds = {name: np.zeros(shape, dtype)}
    output = [runners[0].outputs()[0].name]
    counts = [0] * len(runners)
    stop = time.monotonic() + seconds

    def work(index: int) -> None:
        while time.monotonic() < stop:
            runners[index].run(feeds, output)
            counts[index] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(runners))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) * shape[0] / seconds


def main() -> None:
    for model, (shape, path) in MODELS.items():
        own = [OnnxRunner(path, intra_op_threads=default_intra_op_threads(2)) for _ in range(2)]
        shared_session = OnnxRunner(path, intra_op_threads=default_intra_op_threads(1))
        single = throughput([shared_session], shape, 8)
        separate = throughput(own, shape, 8)
        shared = throughput([shared_session, shared_session], shape, 8)
        print(
            f"{model} batch {shape[0]}: 1 instance {single:,.0f} img/s; 2 instances, own "
            f"sessions {separate:,.0f} img/s; 2 threads on one shared session {shared:,.0f} img/s"
        )


if __name__ == "__main__":
    main()
