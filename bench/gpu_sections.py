"""The measurements of bench/gpu.py, one function a section (see its docstring)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.gpu_libs import DeviceMemory, device_memory
from bench.gpu_run import GpuRun
from bench.loadgen import infer_request_bytes
from bench.overhead import Process
from bench.process_load import run_level_processes
from bench.reliability import rss_bytes
from bench.resnet50 import write_resnet50
from bench.run import ROOT
from service.runtime.onnx_runner import OnnxRunner

DTYPES: dict[str, tuple[type[np.floating[Any]], str]] = {
    "resnet50_fp32": (np.float32, "FP32"),
    "resnet50_fp16": (np.float16, "FP16"),
}
# The served and in-process sessions search cuDNN's algorithms heuristically: an exhaustive
# search runs per new shape and the server warms every batch size on CUDA (section 5 times
# both).
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SERVED_FLAGS = ("--no-metrics", "--autotune-budget", "0.5")


def _model_file(run: GpuRun, name: str) -> Path:
    """bench/resnet50.py's graph for `name`, written once per run."""
    path = run.work / "onnx" / f"{name}.onnx"
    if not path.exists():
        write_resnet50(run.work / "onnx" / name, DTYPES[name][0], max_batch_size=1)
        (run.work / "onnx" / name / "1" / "model.onnx").rename(path)
        shutil.rmtree(run.work / "onnx" / name)
    return path


def _repository(run: GpuRun, label: str, models: dict[str, tuple[str, dict[str, Any]]]) -> Path:
    """A repository of served names -> (ONNX file name, config), model files hard-linked."""
    root = run.work / label
    shutil.rmtree(root, ignore_errors=True)
    for served, (name, config) in models.items():
        (root / served / "1").mkdir(parents=True)
        os.link(_model_file(run, name), root / served / "1" / "model.onnx")
        document: dict[str, Any] = {"device": run.plan.device, **config}
        if run.plan.on_gpu:
            document.setdefault("provider_options", CUDA_OPTIONS)
        (root / served / "config.yaml").write_text(yaml.safe_dump(document))
    return root


def _serve(root: Path, *flags: str, rest: bool = False) -> Process:
    command = [
        sys.executable,
        "-m",
        "service",
        "serve",
        "--model-repository",
        str(root),
        "--port",
        "0",
        *SERVED_FLAGS,
        *flags,
    ]
    if not rest:
        command.append("--no-http")
    return Process(command, "cnnserve listening on", rest=rest)


def _feeds(dtype: type[np.floating], batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"image": rng.random((batch, 3, 224, 224), dtype=np.float32).astype(dtype)}


def _rate(runner: OnnxRunner, feeds: dict[str, np.ndarray], seconds: float) -> float:
    batch = len(feeds["image"])
    runner.run(feeds, ["logits"])  # the shape's first run: cuDNN's algorithm search
    runs, started = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - started < seconds:
        runner.run(feeds, ["logits"])
        runs += 1
    return runs * batch / (time.perf_counter() - started)


def _runner(run: GpuRun, name: str, **options: Any) -> OnnxRunner:
    provider_options = options.pop("provider_options", CUDA_OPTIONS if run.plan.on_gpu else {})
    return OnnxRunner(
        _model_file(run, name),
        device=run.plan.device,
        provider_options=provider_options,
        **options,
    )


def _level(run: GpuRun, server: Process, payload: bytes, concurrency: int) -> tuple[Any, float]:
    return run_level_processes(
        server.address,
        payload,
        concurrency,
        run.plan.clients,
        server_pid=server.process.pid,
        warmup_s=run.plan.warmup_s,
        duration_s=run.plan.served_s,
    )


def _cell(result: Any) -> str:
    return f"{result.throughput:,.0f} ({result.p50_ms:.1f}/{result.p99_ms:.1f})"


# -- 1. the suite's CUDA tests ----------------------------------------------------------


def cuda_tests(run: GpuRun) -> None:
    if not run.fits("The suite's CUDA tests (pytest -m cuda)", 30):
        return
    junit = run.work / "cuda-tests.xml"
    junit.parent.mkdir(parents=True, exist_ok=True)
    # Only the files that hold CUDA tests: collecting the rest would import what a GPU
    # machine need not have (the deploy tests' validators, the export extra).
    files = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("test_*.py")
        if "@cuda_test" in path.read_text()
    )
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # not the machine's plugins
    command = [
        sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider",
        "-p", "pytest_asyncio.plugin", "-p", "pytest_timeout", f"--junitxml={junit}", *files,
    ]  # fmt: skip
    timeout = max(30.0, min(240.0, run.deadline.left() - 60))
    finished = subprocess.run(
        command, cwd=ROOT, env=env, check=False, timeout=timeout, capture_output=True, text=True
    )
    run.report.add(*finished.stdout.strip().splitlines()[-12:])
    rows, passed, skipped, failed = [], 0, 0, 0
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "FAILED"
            elif child.tag == "skipped":
                outcome = f"skipped: {child.get('message', '')}"
        passed += outcome == "passed"
        skipped += outcome.startswith("skipped")
        failed += outcome == "FAILED"
        rows.append((f"{case.get('classname')}::{case.get('name')}", outcome))
    run.report.table(("test", "outcome"), rows)
    run.report.criterion(
        "every CUDA test passes, none skipped",
        (failed + skipped == 0) if run.plan.on_gpu else None,
        f"{passed} passed, {failed} failed, {skipped} skipped, of {len(rows)}",
    )
    if finished.returncode not in (0, 5) or not rows:
        run.report.failures.append("cuda tests")


# -- 2. ResNet-50: in-process best vs served --------------------------------------------


def resnet(run: GpuRun) -> None:
    plan = run.plan
    estimate = len(plan.models) * (30 + len(plan.concurrency) * (plan.served_s + plan.warmup_s + 3))
    if not run.fits("ResNet-50: in-process best vs served", estimate):
        return
    best: dict[str, tuple[float, int]] = {}
    for name in plan.models:
        runner = _runner(run, name)
        rates = {
            b: _rate(runner, _feeds(DTYPES[name][0], b), plan.in_process_s) for b in plan.batches
        }
        runner.close()
        top = max(rates, key=lambda b: rates[b])
        best[name] = (rates[top], top)
        run.report.add(
            f"{name} in-process: " + ", ".join(f"b{b} {r:,.0f}" for b, r in rates.items())
        )
    config = {"max_batch_size": plan.max_batch}
    root = _repository(run, "resnet", {name: (name, config) for name in plan.models})
    server = _serve(root)
    rows = []
    try:
        for name in plan.models:
            payload = infer_request_bytes(name, "image", (1, 3, 224, 224), DTYPES[name][1])
            levels = [_level(run, server, payload, c) for c in plan.concurrency]
            top, cpu_s = max(levels, key=lambda level: level[0].throughput)
            errors = sum(level.errors for level, _ in levels)
            ratio = top.throughput / best[name][0]
            rows.append(
                (
                    name,
                    f"{best[name][0]:,.0f} ({best[name][1]})",
                    *(_cell(level) for level, _ in levels),
                    f"{ratio:.2f}x",
                    f"{cpu_s / max(top.requests, 1) * 1e6:,.0f} us",
                    errors,
                )
            )
            if name == "resnet50_fp16" or not plan.on_gpu:
                run.report.criterion(
                    f"served {name} >= 0.9x in-process best",
                    ratio >= 0.9 if plan.on_gpu else None,
                    f"{ratio:.2f}x",
                )
            if errors:
                run.report.failures.append(f"{name}: {errors} requests errored")
    finally:
        server.stop()
    header = (
        "model",
        "in-process best img/s (batch)",
        *(f"c={c} img/s (p50/p99 ms)" for c in plan.concurrency),
        "best served / in-process",
        "server CPU per request (top)",
        "errors",
    )
    run.report.table(header, rows)
    run.report.add(
        f"clients: {plan.clients} processes, one connection each, batch-1 requests; "
        f"{plan.served_s:.0f} s windows; cudnn_conv_algo_search HEURISTIC"
    )


# -- 3. GPU memory over reloads ---------------------------------------------------------


def _post(rest: str, path: str) -> None:
    request = urllib.request.Request(f"http://{rest}{path}", data=b"{}", method="POST")
    urllib.request.urlopen(request, timeout=300).read()


def memory(run: GpuRun) -> None:
    plan = run.plan
    if not run.fits(f"GPU memory over {plan.reloads} reloads", 15 + 4 * plan.reloads):
        return
    name = "resnet50_fp32"
    root = _repository(run, "memory", {name: (name, {"max_batch_size": 8})})
    baseline = device_memory()  # this process's context: made once, before the server
    server = _serve(root, "--model-control-mode", "explicit", rest=True)
    steps: list[tuple[str, DeviceMemory | None, float]] = []

    def record(step: str) -> None:
        steps.append((step, device_memory(), rss_bytes(server.process.pid) / 2**20))

    try:
        record("server started, nothing loaded")
        _post(server.rest, f"/v2/repository/models/{name}/load")
        record("first load")
        for index in range(1, plan.reloads + 1):
            _post(server.rest, f"/v2/repository/models/{name}/load")
            record(f"reload {index}")
        _post(server.rest, f"/v2/repository/models/{name}/unload")
        record("unload")
    finally:
        server.stop()
    first = steps[1][1]
    rows = [
        (
            step,
            f"{m.used_mib:,.0f}" if m else "n/a",
            f"{m.used_mib - first.used_mib:+,.0f}" if m and first else "n/a",
            f"{rss:,.0f}",
        )
        for step, m, rss in steps
    ]
    run.report.table(("step", "GPU used MiB", "vs first load", "server RSS MiB"), rows)
    if baseline is None or first is None or steps[0][1] is None or steps[-2][1] is None:
        run.report.criterion("GPU memory after the reloads", None, "no CUDA runtime to read")
        return
    footprint = first.used_mib - steps[0][1].used_mib
    growth = steps[-2][1].used_mib - first.used_mib
    run.report.criterion(
        f"GPU memory after {plan.reloads} reloads within one model's footprint of the first load",
        growth <= footprint,
        f"+{growth:,.0f} MiB, footprint {footprint:,.0f} MiB",
    )


# -- 4. IO binding; 5. cuDNN algorithm search -------------------------------------------


def io_binding(run: GpuRun) -> None:
    plan = run.plan
    name = plan.models[-1]
    if not run.fits(f"IO binding on vs off ({name}, in-process)", 20):
        return
    rates: dict[bool, dict[int, float]] = {}
    for bound in (True, False):
        runner = _runner(run, name, io_binding=bound)
        feeds = {b: _feeds(DTYPES[name][0], b) for b in plan.io_batches}
        rates[bound] = {b: _rate(runner, feeds[b], plan.in_process_s) for b in plan.io_batches}
        runner.close()
    rows = [
        (
            b,
            f"{rates[True][b]:,.0f}",
            f"{rates[False][b]:,.0f}",
            f"{rates[True][b] / rates[False][b]:.2f}x",
        )
        for b in plan.io_batches
    ]
    run.report.table(("batch", "io_binding on img/s", "off img/s", "on / off"), rows)


def conv_algo_search(run: GpuRun) -> None:
    plan = run.plan
    name = plan.models[-1]
    if not run.fits(f"cudnn_conv_algo_search EXHAUSTIVE vs HEURISTIC ({name})", 40):
        return
    rows = []
    for search in ("EXHAUSTIVE", "HEURISTIC"):
        started = time.perf_counter()
        runner = _runner(run, name, provider_options={"cudnn_conv_algo_search": search})
        load_s = time.perf_counter() - started
        cells = []
        for batch in plan.algo_batches:
            feeds = _feeds(DTYPES[name][0], batch)
            started = time.perf_counter()
            runner.run(feeds, ["logits"])
            first_s = time.perf_counter() - started
            cells.append(f"{first_s:.2f} s / {_rate(runner, feeds, plan.in_process_s):,.0f}")
        runner.close()
        rows.append((search, f"{load_s:.2f} s", *cells))
    header = (
        "search",
        "session load",
        *(f"batch {b}: first run / img/s" for b in plan.algo_batches),
    )
    run.report.table(header, rows)
    if not plan.on_gpu:
        run.report.add("(the CPU EP takes no cuDNN option: both rows are the same session)")


# -- 6. preprocessing in the graph vs float32 on the wire -------------------------------


def preprocessing(run: GpuRun) -> None:
    plan = run.plan
    if not run.fits("Preprocessing in the graph (uint8 on the wire) vs float32", 40):
        return
    pixels = {"mode": "standardize", "mean": MEAN, "std": STD, "layout": "NHWC"}
    root = _repository(
        run,
        "preprocessing",
        {
            "float32_nchw": ("resnet50_fp32", {"max_batch_size": plan.max_batch}),
            "uint8_nhwc": (
                "resnet50_fp32",
                {"max_batch_size": plan.max_batch, "preprocessing": pixels},
            ),
        },
    )
    payloads = {
        "float32_nchw": infer_request_bytes("float32_nchw", "image", (1, 3, 224, 224), "FP32"),
        "uint8_nhwc": infer_request_bytes("uint8_nhwc", "image", (1, 224, 224, 3), "UINT8"),
    }
    server = _serve(root)
    rows = []
    try:
        for served, payload in payloads.items():
            for concurrency in plan.preprocessing_concurrency:
                result, cpu_s = _level(run, server, payload, concurrency)
                if result.errors:
                    run.report.failures.append(f"preprocessing {served}: {result.errors} errored")
                rows.append(
                    (
                        served,
                        f"{len(payload) / 1000:,.0f} KB",
                        concurrency,
                        _cell(result),
                        f"{cpu_s / max(result.requests, 1) * 1e6:,.0f} us",
                        result.errors,
                    )
                )
    finally:
        server.stop()
    header = ("input", "request", "c", "img/s (p50/p99 ms)", "server CPU per request", "errors")
    run.report.table(header, rows)


# -- 7. decode: gpu vs cpu (bench.photos); 8. --workers ---------------------------------


def decode(run: GpuRun) -> None:
    plan = run.plan
    choices = ("cpu", "gpu") if plan.on_gpu else ("cpu",)
    if not run.fits(
        "decode: gpu vs cpu, 12 MP camera JPEGs, served (bench.photos)", 45 * len(choices)
    ):
        return
    for choice in choices:
        command = [
            sys.executable,
            "-m",
            "bench.photos",
            "--model",
            "resnet50",
            "--decode",
            choice,
            "--seconds",
            str(plan.photos_s),
        ]
        timeout = max(30.0, min(150.0, run.deadline.left()))
        finished = subprocess.run(
            command, cwd=ROOT, check=False, capture_output=True, text=True, timeout=timeout
        )
        run.report.add(
            f"### decode: {choice} (exit {finished.returncode})",
            *finished.stdout.strip().splitlines()[-24:],
        )
        if finished.returncode != 0:
            run.report.add(*finished.stderr.strip().splitlines()[-5:])
            if plan.on_gpu:
                run.report.failures.append(f"bench.photos --decode {choice}")


def workers(run: GpuRun) -> None:
    plan = run.plan
    name = plan.models[-1]
    if not run.fits(
        f"--workers {', '.join(map(str, plan.workers))} ({name})", 25 * len(plan.workers)
    ):
        return
    root = _repository(run, "workers", {name: (name, {"max_batch_size": plan.max_batch})})
    payload = infer_request_bytes(name, "image", (1, 3, 224, 224), DTYPES[name][1])
    baseline = device_memory()
    rows, one = [], None
    for count in plan.workers:
        server = _serve(root, "--workers", str(count))
        try:
            held = device_memory()
            result, cpu_s = _level(run, server, payload, plan.workers_concurrency)
        finally:
            server.stop()
        if result.errors:
            run.report.failures.append(f"--workers {count}: {result.errors} errored")
        one = one or result.throughput
        gpu = f"{held.used_mib - baseline.used_mib:,.0f}" if held and baseline else "n/a"
        rows.append(
            (
                count,
                _cell(result),
                f"{result.throughput / one:.2f}x",
                f"{cpu_s / max(result.requests, 1) * 1e6:,.0f} us",
                gpu,
                result.errors,
            )
        )
    header = (
        "workers",
        f"c={plan.workers_concurrency} img/s (p50/p99 ms)",
        "x one worker",
        "server CPU per request",
        "GPU MiB held",
        "errors",
    )
    run.report.table(header, rows)


SECTIONS: Sequence[tuple[str, Callable[[GpuRun], None]]] = (
    ("tests", cuda_tests),
    ("resnet", resnet),
    ("memory", memory),
    ("io_binding", io_binding),
    ("algo", conv_algo_search),
    ("preprocessing", preprocessing),
    ("decode", decode),
    ("workers", workers),
)
NAMES = tuple(name for name, _ in SECTIONS)
