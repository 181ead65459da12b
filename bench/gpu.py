"""`bench/gpu.sh` (= `python -m bench.gpu`): the GPU run, one command, no network.

On a machine with a CUDA GPU (bench/gpu.sh --wheels DIR installs onnxruntime-gpu and the
rest from wheels first), in this order, each section skipped with a note once the time
budget (--budget-s, default 420 s) cannot hold it:
0. check: a CUDA session really runs on CUDAExecutionProvider (the CUDA EP falls back to
   the CPU silently), and which CUDA/cuDNN libraries this process loaded;
1. the suite's CUDA tests (`pytest -m cuda`): a skip there is a failure;
2. ResNet-50 fp32 and fp16 (bench/resnet50.py, no torch): in-process CUDA EP best over
   batch 1..128 vs served at concurrency 1, 8, 32, 128, 256 (batch-1 clients in several
   processes, one connection each), p50/p99, server CPU per request at the top;
3. GPU memory (cudaMemGetInfo through ctypes) after the first load, each of 10 reloads and
   the unload, with the server's RSS;
4. IO binding on vs off; 5. cudnn_conv_algo_search EXHAUSTIVE vs HEURISTIC (load, first run
   per batch size, throughput);
6. preprocessing in the graph (uint8 on the wire) vs float32 sent by the client, served;
7. `decode: gpu` vs `decode: cpu` on 12 MP camera JPEGs, served (bench.photos);
8. `--workers` 1, 2, 4 on the GPU.
Tables go to stdout and to OUT/gpu.md (--out; written after every section, so a run cut
short keeps what it measured). Criteria (issue 29): served fp16 >= 0.9x in-process best;
GPU memory after the reloads within one model's footprint of the first load; no CUDA test
skipped or failed. Exit 1 when one fails, 2 without a CUDA provider (unless --allow-cpu).
`--allow-cpu` runs every section on the CPU with short windows and small sizes, to check
the script here (tests/integration/test_gpu_run.py); the criteria are then not applicable.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from bench import gpu_sections
from bench.gpu_libs import loaded_libraries
from bench.gpu_run import Deadline, GpuRun, Report, cpu_plan, gpu_plan
from bench.run import OUT, machine
from service.runtime.onnx_runner import CUDA


def tiny_model() -> bytes:
    node = helper.make_node("Relu", ["x"], ["y"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
    graph = helper.make_graph([node], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def check_cuda(report: Report, allow_cpu: bool) -> str | None:
    """The device to measure on ('cuda' / 'cpu'), or None: CUDA wanted and not there."""
    report.add(f"machine: {machine()}")
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None and CUDA in ort.get_available_providers():
        preload()
    used = ["CPUExecutionProvider"]
    if CUDA in ort.get_available_providers():
        session = ort.InferenceSession(tiny_model(), providers=[CUDA, "CPUExecutionProvider"])
        session.run(None, {"x": np.ones((1, 16), np.float32)})
        used = session.get_providers()
    report.add(f"a CUDA session's providers: {used}")
    for library in loaded_libraries():
        report.add(f"loaded: {library}")
    if used[0] == CUDA:
        query = [
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total",
            "--format=csv,noheader",
        ]
        gpu = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
        report.add(f"gpu: {gpu}")
        return "cuda"
    why = (
        f"no CUDA execution provider in this onnxruntime ({ort.__version__}, providers "
        f"{ort.get_available_providers()}): install onnxruntime-gpu (alone: it shares the module "
        "name with onnxruntime; bench/gpu.sh --wheels DIR), or pass --allow-cpu to check the script"
        if CUDA not in ort.get_available_providers()
        else f"the CUDA provider is there but a session fell back to {used[0]} (libraries above)"
    )
    if allow_cpu:
        report.add(f"--allow-cpu: measuring on the CPU ({why})")
        return "cpu"
    print(why, file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--allow-cpu", action="store_true", help="check the script on a CPU")
    parser.add_argument("--out", type=Path, help="also write the tables to OUT/gpu.md")
    parser.add_argument("--budget-s", type=float, default=420.0, help="time for all sections")
    parser.add_argument("--skip", nargs="*", default=[], choices=gpu_sections.NAMES)
    args = parser.parse_args(argv)
    started = time.monotonic()
    report = Report(args.out)
    report.add(f"# bench/gpu.sh, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    device = check_cuda(report, args.allow_cpu)
    if device is None:
        return 2
    plan = gpu_plan(len(os.sched_getaffinity(0))) if device == "cuda" else cpu_plan()
    run = GpuRun(plan, report, Deadline(args.budget_s), OUT / "gpu")
    sections: list[tuple[str, Callable[[GpuRun], None]]] = [
        (name, section) for name, section in gpu_sections.SECTIONS if name not in args.skip
    ]
    for name, section in sections:
        try:
            section(run)
        except Exception as error:  # one section's failure is reported, the rest still run
            report.add(f"section {name} failed: {type(error).__name__}: {error}")
            report.failures.append(name)
    report.add("", f"total {time.monotonic() - started:.0f} s; failed: {report.failures or 'none'}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
